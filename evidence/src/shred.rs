//! The shred certificate: what a crypto-shred destroyed, who asked, and where it sits in the
//! organization's audit chain. Written in the evidence pack's format: a directory with
//! `certificate.json`, `CHAIN_HEAD` (the chain's position and hash at the `tenant_shredded`
//! event) and `SHA256SUMS` over both (`sha256sum -c` format).
//!
//! Read from the metadata database only (`pf_shreds`, `pf_audit_events`); it names key ids,
//! never key material, and no tenant content.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Error;
use crate::pack::{CHAIN_HEAD, SHA256SUMS, Verdict, check_chain_position, check_sums, read};

pub const CERTIFICATE_JSON: &str = "certificate.json";
/// `certificate.json`'s `format`.
pub const CERTIFICATE_FORMAT: &str = "drfleet-shred-certificate/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requester {
    pub subject: String,
    pub command_id: Uuid,
    pub requested_at: DateTime<Utc>,
    pub reason: String,
}

/// Where the `tenant_shredded` event sits in the organization's audit chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainPosition {
    pub event_id: Uuid,
    pub chain_seq: i64,
    /// Lowercase hex of the chain hash at that event: every later link commits to it.
    pub chain_hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShredCertificate {
    pub format: String,
    pub organization_id: Uuid,
    pub shred_id: Uuid,
    pub performed_at: DateTime<Utc>,
    /// The requests that made up the two-person rule, oldest first.
    pub requesters: Vec<Requester>,
    /// Tenant key ids destroyed (ids only; the keys were overwritten and deleted).
    pub key_ids_destroyed: Vec<Uuid>,
    /// Backup records marked shredded.
    pub records_affected: i64,
    pub objects_deleted: Option<i64>,
    /// Objects that could not be deleted (e.g. under an object lock): present, unreadable.
    pub objects_remaining: Option<i64>,
    /// `None` while the audit sink has not stored the event yet.
    pub audit_chain: Option<ChainPosition>,
    pub generated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ShredRow {
    id: Uuid,
    organization_id: Uuid,
    performed_at: DateTime<Utc>,
    requesters: sqlx::types::Json<Vec<Requester>>,
    key_ids: sqlx::types::Json<Vec<Uuid>>,
    records_affected: i32,
    objects_deleted: Option<i32>,
    objects_remaining: Option<i32>,
    event_id: Option<Uuid>,
}

/// The certificate of `shred` (or of the organization's latest shred), if there is one.
pub async fn collect(
    pool: &PgPool,
    org: Uuid,
    shred: Option<Uuid>,
) -> Result<Option<ShredCertificate>, Error> {
    let row: Option<ShredRow> = sqlx::query_as(
        "SELECT id, organization_id, performed_at, requesters, key_ids, records_affected, \
                objects_deleted, objects_remaining, event_id \
         FROM pf_shreds WHERE organization_id = $1 AND ($2::uuid IS NULL OR id = $2) \
         ORDER BY performed_at DESC LIMIT 1",
    )
    .bind(org)
    .bind(shred)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let audit_chain = match r.event_id {
        Some(event_id) => {
            let pos: Option<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT chain_seq, hash FROM pf_audit_events WHERE event_id = $1 AND chain_org = $2",
            )
            .bind(event_id)
            .bind(org)
            .fetch_optional(pool)
            .await?;
            pos.map(|(chain_seq, hash)| ChainPosition {
                event_id,
                chain_seq,
                chain_hash: hex::encode(hash),
            })
        }
        None => None,
    };
    Ok(Some(ShredCertificate {
        format: CERTIFICATE_FORMAT.into(),
        organization_id: r.organization_id,
        shred_id: r.id,
        performed_at: r.performed_at,
        requesters: r.requesters.0,
        key_ids_destroyed: r.key_ids.0,
        records_affected: r.records_affected.into(),
        objects_deleted: r.objects_deleted.map(Into::into),
        objects_remaining: r.objects_remaining.map(Into::into),
        audit_chain,
        generated_at: Utc::now(),
    }))
}

/// Writes the certificate directory (created if missing); returns certificate.json's SHA-256.
pub fn write(dir: &Path, c: &ShredCertificate) -> Result<String, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut json = serde_json::to_vec_pretty(c).expect("certificate serializes");
    json.push(b'\n');
    let head = chain_head_text(c);
    let put = |name: &str, bytes: &[u8]| -> Result<String, Error> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        Ok(hex::encode(Sha256::digest(bytes)))
    };
    let cert = put(CERTIFICATE_JSON, &json)?;
    let head = put(CHAIN_HEAD, head.as_bytes())?;
    put(
        SHA256SUMS,
        format!("{cert}  {CERTIFICATE_JSON}\n{head}  {CHAIN_HEAD}\n").as_bytes(),
    )?;
    Ok(cert)
}

fn chain_head_text(c: &ShredCertificate) -> String {
    match &c.audit_chain {
        Some(p) => format!(
            "organization_id {}\nchain_seq {}\nchain_hash {}\n",
            c.organization_id, p.chain_seq, p.chain_hash
        ),
        None => format!("organization_id {}\nchain_seq pending\n", c.organization_id),
    }
}

/// `drctl evidence check` of a certificate directory: the digests, CHAIN_HEAD against the
/// certificate, the recorded position in the organization's intact chain, and that the shred
/// is the one `pf_shreds` holds.
pub async fn check(pool: &PgPool, dir: &Path) -> Result<Verdict, Error> {
    if let Err(m) = check_sums(dir, &[CERTIFICATE_JSON, CHAIN_HEAD])? {
        return Ok(Verdict::Mismatch(m));
    }
    let c: ShredCertificate = serde_json::from_slice(&read(dir, CERTIFICATE_JSON)?)
        .map_err(|_| Error::BadPack(dir.join(CERTIFICATE_JSON).display().to_string()))?;
    if read(dir, CHAIN_HEAD)? != chain_head_text(&c).as_bytes() {
        return Ok(Verdict::Mismatch(format!(
            "{}: CHAIN_HEAD does not match certificate.json",
            dir.display()
        )));
    }
    let Some(pos) = &c.audit_chain else {
        return Ok(Verdict::Mismatch(format!(
            "{}: the certificate has no audit-chain position (written before the audit sink stored the event)",
            dir.display()
        )));
    };
    let keys: Option<sqlx::types::Json<Vec<Uuid>>> = sqlx::query_scalar(
        "SELECT key_ids FROM pf_shreds WHERE id = $1 AND organization_id = $2 AND event_id = $3",
    )
    .bind(c.shred_id)
    .bind(c.organization_id)
    .bind(pos.event_id)
    .fetch_optional(pool)
    .await?;
    if keys.map(|k| k.0) != Some(c.key_ids_destroyed.clone()) {
        return Ok(Verdict::Mismatch(format!(
            "{}: shred {} of {} is not on record as the certificate says",
            dir.display(),
            c.shred_id,
            c.organization_id
        )));
    }
    check_chain_position(pool, dir, c.organization_id, pos.chain_seq, &pos.chain_hash).await
}
