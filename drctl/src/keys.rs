//! `drctl keys rotate-master|rotate|list|certificate` and `drctl shred`: the key hierarchy's
//! commands (queue `dr.keys`) and what the metadata database says about tenant keys and
//! shreds. Never prints key material: ids, states, master key ids and times only.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::json;

use drfleet_evidence::shred as certificate;
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::v1::{self, command_envelope::Command};

use crate::cli::{CommandOpts, DbArgs, OutputFormat};
use crate::db::pool;
use crate::error::{Error, Outcome};
use crate::output::{instant, print_line};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum KeysCmd {
    /// Re-wrap every tenant key of the fleet under the keys workers' current master key
    /// (DR_MASTER_KEY); no artifact is read or written. Afterwards the old master key can leave
    /// DR_PREVIOUS_MASTER_KEYS (unless `master_key_rotated` lists it for format-1 artifacts).
    /// `--org` is the operator's own organization (its audit chain records the rotation).
    RotateMaster(KeysActionArgs),
    /// Retire the organization's active tenant key: its next backup starts a new key; older
    /// artifacts keep theirs.
    Rotate(KeysActionArgs),
    /// The organization's tenant keys: id, state, wrapping master key id, times.
    List(KeysListArgs),
    /// Write the shred certificate (certificate.json, CHAIN_HEAD, SHA256SUMS) of the
    /// organization's latest shred, or of `--shred ID`.
    Certificate(CertificateArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct KeysActionArgs {
    /// Organization (tenant) key.
    #[arg(long)]
    pub org: TenantKey,
    #[command(flatten)]
    pub opts: CommandOpts,
}

#[derive(clap::Args, Debug, Clone)]
pub struct KeysListArgs {
    /// Organization (tenant) key.
    #[arg(long)]
    pub org: TenantKey,
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CertificateArgs {
    /// Organization (tenant) key.
    #[arg(long)]
    pub org: TenantKey,
    /// A shred id (`tenant_shredded.shred_id`); default the organization's latest.
    #[arg(long)]
    pub shred: Option<uuid::Uuid>,
    /// Directory to write (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ShredArgs {
    /// Organization (tenant) to crypto-shred.
    #[arg(long)]
    pub org: TenantKey,
    /// Why (an erasure ticket), at most 500 bytes: recorded in the certificate, never in
    /// events.
    #[arg(long)]
    pub reason: String,
    /// When this request performs the shred, write its certificate here (needs
    /// DR_DATABASE_URL).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub opts: CommandOpts,
}

pub fn rotate_master_body() -> Command {
    Command::Keys(v1::KeysCommand {
        action: v1::keys_command::Action::RotateMaster as i32,
    })
}

pub fn rotate_body() -> Command {
    Command::Keys(v1::KeysCommand {
        action: v1::keys_command::Action::RotateTenant as i32,
    })
}

pub fn shred_body(a: &ShredArgs) -> Command {
    Command::Shred(v1::ShredCommand {
        reason: a.reason.clone(),
    })
}

/// `drctl shred`: the request, waited for; with `--out`, the certificate when this request
/// was the second one (the shred happened).
pub async fn shred(a: &ShredArgs) -> Result<Outcome, Error> {
    let started = Utc::now();
    let outcome = crate::command::run(&a.org, shred_body(a), &a.opts).await?;
    if outcome != Outcome::Success || a.opts.no_wait {
        return Ok(outcome);
    }
    let Some(out) = &a.out else {
        return Ok(outcome);
    };
    let pool = pool(&a.db).await?;
    let performed: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM pf_shreds WHERE organization_id = $1 AND performed_at >= $2 \
         ORDER BY performed_at DESC LIMIT 1",
    )
    .bind(a.org.organization_id().as_uuid())
    .bind(started - chrono::Duration::seconds(5))
    .fetch_optional(&pool)
    .await?;
    match performed {
        Some(id) => write_certificate(&pool, &a.org, Some(id), out).await,
        None => {
            eprintln!(
                "drctl: shred requested; it takes effect when a second subject requests it within 24 hours (no certificate yet)"
            );
            Ok(outcome)
        }
    }
}

pub async fn certificate(a: &CertificateArgs) -> Result<Outcome, Error> {
    let pool = pool(&a.db).await?;
    write_certificate(&pool, &a.org, a.shred, &a.out).await
}

/// Waits (a bounded while) for the audit sink to chain the `tenant_shredded` event, then
/// writes the certificate; without it, writes one whose chain position is pending.
async fn write_certificate(
    pool: &sqlx::PgPool,
    org: &TenantKey,
    shred: Option<uuid::Uuid>,
    out: &std::path::Path,
) -> Result<Outcome, Error> {
    let org_id = org.organization_id().as_uuid();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let cert = loop {
        let Some(c) = certificate::collect(pool, org_id, shred)
            .await
            .map_err(evidence_error)?
        else {
            eprintln!("drctl: no shred of this organization on record");
            return Ok(Outcome::Failed);
        };
        if c.audit_chain.is_some() || std::time::Instant::now() >= deadline {
            break c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let digest = certificate::write(out, &cert).map_err(evidence_error)?;
    print_line(&json!({
        "certificate": out.display().to_string(),
        "shred_id": cert.shred_id,
        "certificate_sha256": digest,
        "chain_seq": cert.audit_chain.as_ref().map(|p| p.chain_seq),
    }))?;
    Ok(Outcome::Success)
}

fn evidence_error(e: drfleet_evidence::Error) -> Error {
    match e {
        drfleet_evidence::Error::Db(e) => Error::Sql(e),
        drfleet_evidence::Error::Io { source, .. } => Error::Io(source),
        other => Error::Io(std::io::Error::other(other.to_string())),
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: uuid::Uuid,
    state: String,
    master_key_id: String,
    created_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
    rewrapped_at: Option<DateTime<Utc>>,
}

pub async fn list(a: &KeysListArgs) -> Result<Outcome, Error> {
    let pool = pool(&a.db).await?;
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT id, state, master_key_id, created_at, retired_at, rewrapped_at FROM pf_tenant_keys \
         WHERE organization_id = $1 ORDER BY created_at DESC",
    )
    .bind(a.org.organization_id().as_uuid())
    .fetch_all(&pool)
    .await?;
    let destroyed: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, destroyed_at FROM pf_destroyed_tenant_keys WHERE organization_id = $1 ORDER BY destroyed_at DESC",
    )
    .bind(a.org.organization_id().as_uuid())
    .fetch_all(&pool)
    .await?;
    match a.output {
        OutputFormat::Json => {
            for r in &rows {
                print_line(&json!({"key_id": key_id_text(r.id), "state": r.state,
                    "master_key_id": r.master_key_id, "created_at": instant(r.created_at),
                    "retired_at": r.retired_at.map(instant), "rewrapped_at": r.rewrapped_at.map(instant)}))?;
            }
            for (id, at) in &destroyed {
                print_line(&json!({"key_id": key_id_text(*id), "state": "destroyed",
                    "destroyed_at": instant(*at)}))?;
            }
        }
        OutputFormat::Text => {
            println!("{:<44} {:<9} {:<20} CREATED", "KEY", "STATE", "MASTER KEY");
            for r in &rows {
                println!(
                    "{:<44} {:<9} {:<20} {}",
                    key_id_text(r.id),
                    r.state,
                    r.master_key_id,
                    r.created_at.to_rfc3339()
                );
            }
            for (id, at) in &destroyed {
                println!(
                    "{:<44} {:<9} {:<20} destroyed {}",
                    key_id_text(*id),
                    "destroyed",
                    "-",
                    at.to_rfc3339()
                );
            }
        }
    }
    Ok(Outcome::Success)
}

/// The id artifacts record (`tenant:<uuid>`, as `drfleet_artifact::tenant_key_id`); drctl
/// does not link the artifact crate for one format string.
fn key_id_text(id: uuid::Uuid) -> String {
    format!("tenant:{id}")
}
