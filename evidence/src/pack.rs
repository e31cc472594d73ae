//! A pack on disk, and checking one.
//!
//! One organization's pack is a directory of four files:
//! - `evidence.json` (pretty-printed [`Evidence`]),
//! - `report.html` (the self-contained page),
//! - `CHAIN_HEAD`: `organization_id <uuid>`, `chain_seq <n>`, `chain_hash <hex>` lines — the
//!   organization's audit-chain head when the pack was generated,
//! - `SHA256SUMS` over the other three, in `sha256sum -c` format.
//!
//! A fleet (`--all-orgs`) is a directory with one pack per organization in `<org>/`, a
//! `fleet-summary.json` (each organization's control statuses and evidence digest) and a
//! `SHA256SUMS` over the summary.
//!
//! [`check`] recomputes the digests and asks the metadata database whether the recorded head
//! is still in the organization's chain and the chain verifies.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::model::{Evidence, Parameters, SCHEMA_VERSION, Status, Window};
use crate::{Error, render};

pub const EVIDENCE_JSON: &str = "evidence.json";
pub const REPORT_HTML: &str = "report.html";
pub const CHAIN_HEAD: &str = "CHAIN_HEAD";
pub const SHA256SUMS: &str = "SHA256SUMS";
pub const FLEET_SUMMARY: &str = "fleet-summary.json";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<String, Error> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    Ok(sha256_hex(bytes))
}

fn sums(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, digest)| format!("{digest}  {name}\n"))
        .collect()
}

/// What a written pack is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub evidence_sha256: String,
    pub report_sha256: String,
}

pub fn chain_head_text(e: &Evidence) -> String {
    format!(
        "organization_id {}\nchain_seq {}\nchain_hash {}\n",
        e.organization_id, e.audit_chain.head_seq, e.audit_chain.head_hash
    )
}

/// Write one organization's pack into `dir` (created if missing).
pub fn write_pack(dir: &Path, e: &Evidence) -> Result<Written, Error> {
    std::fs::create_dir_all(dir).map_err(|err| Error::io(dir, err))?;
    let mut json = serde_json::to_vec_pretty(e).expect("evidence serializes");
    json.push(b'\n');
    let html = render::render(e)?;
    let evidence_sha256 = write(dir, EVIDENCE_JSON, &json)?;
    let report_sha256 = write(dir, REPORT_HTML, html.as_bytes())?;
    let head = write(dir, CHAIN_HEAD, chain_head_text(e).as_bytes())?;
    write(
        dir,
        SHA256SUMS,
        sums(&[
            (EVIDENCE_JSON, &evidence_sha256),
            (REPORT_HTML, &report_sha256),
            (CHAIN_HEAD, &head),
        ])
        .as_bytes(),
    )?;
    Ok(Written {
        evidence_sha256,
        report_sha256,
    })
}

/// `fleet-summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSummary {
    pub schema_version: u32,
    pub generated_at: DateTime<Utc>,
    pub window: Window,
    pub parameters: Parameters,
    pub organizations: Vec<FleetEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEntry {
    pub organization_id: Uuid,
    /// The pack's directory, relative to the summary.
    pub path: String,
    pub evidence_sha256: String,
    pub head_seq: i64,
    pub head_hash: String,
    pub controls: BTreeMap<String, Status>,
    pub compliant: usize,
    pub non_compliant: usize,
    pub not_applicable: usize,
}

impl FleetEntry {
    pub fn new(e: &Evidence, w: &Written) -> Self {
        let count = |s: Status| e.controls.iter().filter(|c| c.status == s).count();
        Self {
            organization_id: e.organization_id,
            path: e.organization_id.to_string(),
            evidence_sha256: w.evidence_sha256.clone(),
            head_seq: e.audit_chain.head_seq,
            head_hash: e.audit_chain.head_hash.clone(),
            controls: e
                .controls
                .iter()
                .map(|c| (c.control.clone(), c.status))
                .collect(),
            compliant: count(Status::Compliant),
            non_compliant: count(Status::NonCompliant),
            not_applicable: count(Status::NotApplicable),
        }
    }
}

pub fn write_fleet_summary(
    dir: &Path,
    window: Window,
    parameters: Parameters,
    now: DateTime<Utc>,
    organizations: Vec<FleetEntry>,
) -> Result<(), Error> {
    let s = FleetSummary {
        schema_version: SCHEMA_VERSION,
        generated_at: now,
        window,
        parameters,
        organizations,
    };
    let mut json = serde_json::to_vec_pretty(&s).expect("summary serializes");
    json.push(b'\n');
    let digest = write(dir, FLEET_SUMMARY, &json)?;
    write(
        dir,
        SHA256SUMS,
        sums(&[(FLEET_SUMMARY, &digest)]).as_bytes(),
    )?;
    Ok(())
}

/// The verdict of [`check`]: `Ok` with what was confirmed, or the first mismatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok(String),
    Mismatch(String),
}

pub(crate) fn read(dir: &Path, name: &str) -> Result<Vec<u8>, Error> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| Error::io(&path, e))
}

/// Check the digests of `SHA256SUMS` in `dir`; `required` names must be listed.
pub(crate) fn check_sums(dir: &Path, required: &[&str]) -> Result<Result<(), String>, Error> {
    let sums = match std::fs::read_to_string(dir.join(SHA256SUMS)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!("{}: SHA256SUMS missing", dir.display())));
        }
        Err(e) => return Err(Error::io(&dir.join(SHA256SUMS), e)),
    };
    let mut listed = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let Some((digest, name)) = line.split_once("  ") else {
            return Ok(Err(format!(
                "{}: SHA256SUMS: malformed line",
                dir.display()
            )));
        };
        // Plain names only: a pack never points outside its directory.
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Ok(Err(format!("{}: SHA256SUMS: bad file name", dir.display())));
        }
        let bytes = match std::fs::read(dir.join(name)) {
            Ok(b) => b,
            Err(_) => return Ok(Err(format!("{}: {name} missing", dir.display()))),
        };
        if sha256_hex(&bytes) != digest.to_ascii_lowercase() {
            return Ok(Err(format!(
                "{}: {name}: digest does not match SHA256SUMS",
                dir.display()
            )));
        }
        listed.push(name.to_string());
    }
    if let Some(missing) = required.iter().find(|r| !listed.iter().any(|l| l == *r)) {
        return Ok(Err(format!(
            "{}: SHA256SUMS does not list {missing}",
            dir.display()
        )));
    }
    Ok(Ok(()))
}

/// Check a pack (a directory with `evidence.json`), a fleet (with `fleet-summary.json`) or a
/// shred certificate (with `certificate.json`, [`crate::shred::check`]).
pub async fn check(pool: &PgPool, dir: &Path) -> Result<Verdict, Error> {
    if dir.join(FLEET_SUMMARY).exists() {
        return check_fleet(pool, dir).await;
    }
    if dir.join(crate::shred::CERTIFICATE_JSON).exists() {
        return crate::shred::check(pool, dir).await;
    }
    check_pack(pool, dir).await
}

async fn check_fleet(pool: &PgPool, dir: &Path) -> Result<Verdict, Error> {
    if let Err(m) = check_sums(dir, &[FLEET_SUMMARY])? {
        return Ok(Verdict::Mismatch(m));
    }
    let summary: FleetSummary = serde_json::from_slice(&read(dir, FLEET_SUMMARY)?)
        .map_err(|_| Error::BadPack(dir.join(FLEET_SUMMARY).display().to_string()))?;
    for o in &summary.organizations {
        if o.path != o.organization_id.to_string() {
            return Ok(Verdict::Mismatch(format!(
                "{}: bad pack path for {}",
                dir.display(),
                o.organization_id
            )));
        }
        let sub = dir.join(&o.path);
        match check_pack(pool, &sub).await? {
            Verdict::Ok(_) => {}
            m => return Ok(m),
        }
        if sha256_hex(&read(&sub, EVIDENCE_JSON)?) != o.evidence_sha256 {
            return Ok(Verdict::Mismatch(format!(
                "{}: evidence.json is not the one fleet-summary.json lists",
                sub.display()
            )));
        }
    }
    Ok(Verdict::Ok(format!(
        "{}: {} organization packs: digests match; chain heads are in intact chains",
        dir.display(),
        summary.organizations.len()
    )))
}

async fn check_pack(pool: &PgPool, dir: &Path) -> Result<Verdict, Error> {
    if let Err(m) = check_sums(dir, &[EVIDENCE_JSON, REPORT_HTML, CHAIN_HEAD])? {
        return Ok(Verdict::Mismatch(m));
    }
    let e: Evidence = serde_json::from_slice(&read(dir, EVIDENCE_JSON)?)
        .map_err(|_| Error::BadPack(dir.join(EVIDENCE_JSON).display().to_string()))?;
    if read(dir, CHAIN_HEAD)? != chain_head_text(&e).as_bytes() {
        return Ok(Verdict::Mismatch(format!(
            "{}: CHAIN_HEAD does not match evidence.json's audit_chain",
            dir.display()
        )));
    }
    check_chain_position(
        pool,
        dir,
        e.organization_id,
        e.audit_chain.head_seq,
        &e.audit_chain.head_hash,
    )
    .await
}

/// `hash` is the hash of position `seq` of `org`'s chain (0: the empty chain), and that chain
/// verifies.
pub(crate) async fn check_chain_position(
    pool: &PgPool,
    dir: &Path,
    org: Uuid,
    seq: i64,
    hash: &str,
) -> Result<Verdict, Error> {
    if seq > 0 {
        match drfleet_audit::hash_at(pool, org, seq).await? {
            None => {
                return Ok(Verdict::Mismatch(format!(
                    "{}: the audit chain of {org} has no position {seq}",
                    dir.display()
                )));
            }
            Some(h) if hex::encode(&h) != *hash => {
                return Ok(Verdict::Mismatch(format!(
                    "{}: the audit chain of {org} has hash {} at position {seq}; the pack records {hash}",
                    dir.display(),
                    hex::encode(&h)
                )));
            }
            Some(_) => {}
        }
    }
    match drfleet_audit::verify_chains(pool, Some(org)).await? {
        Ok(n) => Ok(Verdict::Ok(format!(
            "{}: digests match; chain head {seq} {hash} is in the intact audit chain of {org} ({n} events verified)",
            dir.display()
        ))),
        Err(b) => Ok(Verdict::Mismatch(format!(
            "{}: the audit chain of {org} is broken at position {}: {}",
            dir.display(),
            b.chain_seq,
            b.problem
        ))),
    }
}
