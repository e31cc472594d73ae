//! # drfleet-evidence — the compliance evidence pack
//!
//! One organization's DR evidence over a time window, from the metadata database only (no
//! broker, no master key): the policies in force and every change to them, the backups, the
//! achieved RPO, restores, drills, alerts, the audit chain's head — and nine controls with
//! COMPLIANT / NON_COMPLIANT / NOT_APPLICABLE, modelled on AWS Backup Audit Manager.
//! `drctl evidence` drives it; docs/evidence.md documents the JSON.
//!
//! Layout:
//! - [`model`]: the `evidence.json` types and [`SCHEMA_VERSION`].
//! - [`collect`]: database reads → typed facts (every query filters on the organization).
//! - [`controls`]: pure evaluation of each control (unit tests and proptests beside it).
//! - [`charts`] and [`render`]: the self-contained `report.html` (askama, inline SVG).
//! - [`pack`]: writing a pack (`evidence.json`, `report.html`, `CHAIN_HEAD`, `SHA256SUMS`),
//!   the fleet summary, and checking a pack against the chain.
//! - [`shred`]: the shred certificate (`certificate.json`, `CHAIN_HEAD`, `SHA256SUMS`) of a
//!   crypto-shredded organization.

pub mod charts;
pub mod collect;
pub mod controls;
pub mod model;
pub mod pack;
pub mod render;
pub mod shred;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub use model::{Evidence, Parameters, SCHEMA_VERSION, Status, Window};

/// Why a pack could not be generated, written or checked. Display carries what failed and
/// where, never row content; database and I/O errors are worth a retry, the others are not.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metadata database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rendering report.html: {0}")]
    Render(#[from] askama::Error),
    #[error("{0}: not a readable evidence pack")]
    BadPack(String),
}

impl Error {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// A database or I/O error may pass when retried; a bad pack or template will not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Db(_) | Error::Io { .. })
    }
}

/// Collect one organization's facts and evaluate the controls.
pub async fn generate(
    pool: &PgPool,
    org: Uuid,
    window: Window,
    params: &Parameters,
    now: DateTime<Utc>,
) -> Result<Evidence, Error> {
    let c = collect::collect(pool, org, window, params, now).await?;
    Ok(assemble(org, window, *params, now, c))
}

/// The pack of collected facts: controls and the achieved-RPO series computed.
pub fn assemble(
    org: Uuid,
    window: Window,
    params: Parameters,
    now: DateTime<Utc>,
    c: collect::Collected,
) -> Evidence {
    let facts = controls::Facts {
        window,
        generated_at: now,
        policies: &c.policies,
        backups: &c.backups,
        drills: &c.drills,
        audit_chain: &c.audit_chain,
    };
    let evaluated = controls::evaluate(&facts, &params);
    let objective = facts.rpo_objective().map(|(r, _)| r);
    let times: Vec<DateTime<Utc>> = facts
        .recovery_points()
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| window.contains(*t))
        .collect();
    let achieved_rpo = controls::gaps(&times)
        .into_iter()
        .map(|(at, gap_seconds)| model::RpoPoint {
            at,
            gap_seconds,
            objective_seconds: objective,
        })
        .collect();
    Evidence {
        schema_version: SCHEMA_VERSION,
        organization_id: org,
        window,
        generated_at: now,
        parameters: params,
        controls: evaluated,
        policies: c.policies,
        policy_changes: c.policy_changes,
        backups: c.backups,
        achieved_rpo,
        restores: c.restores,
        drills: c.drills,
        alerts: c.alerts,
        audit_chain: c.audit_chain,
    }
}
