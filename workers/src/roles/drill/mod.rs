//! The drill role: a DR drill restores one backup into a fresh scratch schema
//! `dr_drill_<id>` of the drill target — a named restore target (DR_RESTORE_TARGETS), the
//! command's or DR_DRILL_TARGET; never the source database — validates it, measures RTO and
//! RPO against the policy's objectives, records one report and drops the scratch schema.
//!
//! 1. The backup is chosen ([`select`]: LATEST, RANDOM_WITHIN_WINDOW or RECORD) and the
//!    report row written with it ([`report::start`]); a later attempt reuses both.
//! 2. The staging engine, with every table recreated from the manifest inside the scratch
//!    schema ([`Tables::Recreate`]): fetch + sealed pass, schema, load, the built-in checks
//!    (schema recreated, row counts, content hashes, every row the tenant's, foreign keys
//!    closed within the backup), then constraints and indexes.
//! 3. The policy's assertions ([`suite`]), read-only, scratch schema first on the path.
//! 4. RTO = this attempt's start → the validated scratch copy (the phases listed); RPO = the
//!    drill's start − the backup's snapshot. Both held against the policy's objectives.
//! 5. The scratch schema is dropped (or kept `keep_hours`), then the report, the
//!    `dr_drill_completed` event and the policy's drill alerts commit in one transaction
//!    with the job. A drill whose checks fail is a completed drill with `passed = false`.
//!
//! A drill that cannot run (no backup, the target unreachable, an unreadable artifact, …)
//! ends in `dr_drill_failed` with its report row. A worker killed mid-way leaves its scratch
//! schema to the next attempt (which drops it before loading), to the final failure, or to
//! the [`sweep`] (scratch of finished drills, and kept scratch past `keep_until`).

pub mod report;
pub mod select;
pub mod suite;
pub mod sweep;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};

use drfleet_artifact::Manifest;
use drfleet_infra::auth::Actor;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::validate::{CommandBody, DrillSpec, ReasonCode, Rejection, ValidCommand};

use crate::config::DrillSettings;
use crate::engine::staging::{self, Stage, Tables};
use crate::engine::{RoleCtx, admit_completed_record, tenant_key};
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler};
use report::{Phase, Policy};
use suite::Row;

pub struct DrillHandler {
    ctx: Arc<RoleCtx>,
    settings: DrillSettings,
}

impl DrillHandler {
    pub fn new(ctx: Arc<RoleCtx>, settings: DrillSettings) -> Self {
        Self { ctx, settings }
    }
}

fn spec(job: &Job) -> Result<&DrillSpec, JobError> {
    match &job.spec {
        CommandBody::Drill(d) => Ok(d),
        _ => Err(JobError::permanent("SPEC_MISMATCH", "job is not a drill")),
    }
}

/// Scratch schema of a drill job: `dr_drill_` + the random tail of its id (the same on every
/// attempt, so a later attempt finds what an earlier one left).
pub fn scratch_schema(job_id: uuid::Uuid) -> String {
    let hex = job_id.simple().to_string();
    format!("dr_drill_{}", &hex[20..])
}

/// Why a drill cannot pick a target.
enum TargetError {
    None,
    Unknown,
    Source,
}

impl DrillHandler {
    /// The target a drill restores into: the command's, else DR_DRILL_TARGET.
    fn target<'a>(&'a self, spec: &'a DrillSpec) -> Result<(&'a str, &'a PgPool), TargetError> {
        let name = spec
            .target
            .as_deref()
            .or(self.settings.target.as_deref())
            .ok_or(TargetError::None)?;
        if self.settings.sources.contains(name) {
            return Err(TargetError::Source);
        }
        let pool = self.ctx.target(name).ok_or(TargetError::Unknown)?;
        Ok((name, pool))
    }
}

/// The backup record drilled: its object and recorded manifest.
struct Record {
    object_key: String,
    manifest: Manifest,
}

async fn load_record(
    conn: &mut PgConnection,
    org: uuid::Uuid,
    id: uuid::Uuid,
) -> Result<Record, JobError> {
    let row: Option<(Option<String>, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT object_key, manifest FROM pf_backup_records \
          WHERE id = $1 AND organization_id = $2 AND status = 'completed'",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((Some(object_key), Some(manifest))) = row else {
        return Err(JobError::permanent(
            "BACKUP_NOT_RESTORABLE",
            "backup record is missing or not completed",
        ));
    };
    let manifest: Manifest = serde_json::from_value(manifest)
        .map_err(|_| JobError::permanent("MANIFEST_INVALID", "recorded manifest unreadable"))?;
    if manifest.organization_id != org || manifest.backup_record_id != id {
        return Err(JobError::permanent(
            "MANIFEST_BINDING_MISMATCH",
            "manifest belongs to another record",
        ));
    }
    Ok(Record {
        object_key,
        manifest,
    })
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What the restore into scratch and the suite produced.
struct Validated {
    matrix: Vec<Row>,
    phases: Vec<Phase>,
    /// This attempt's start → validated scratch copy (or the failed phase's end).
    rto_ms: u64,
    /// The backup made it into the scratch schema (false: a phase found it unusable, and
    /// the matrix says which).
    restored: bool,
}

/// Whether a phase's error is a finding about the backup (a corrupt artifact, a schema that
/// cannot be recreated, rows that do not load) — a drill that ran and did not pass — rather
/// than the drill being unable to run (a database or store unavailable: retried, then
/// `dr_drill_failed`).
fn is_finding(e: &JobError) -> bool {
    !e.transient && !matches!(e.code.as_ref(), "SOURCE_DATABASE_ERROR" | "DATABASE_ERROR")
}

fn failed_row(name: &str, e: &JobError) -> Row {
    Row::new(name, false, format!("{}: {}", e.code, e.message))
}

impl DrillHandler {
    /// Steps 2–3: the scratch copy built, checked and asserted. The scratch schema is left
    /// as it is (the caller drops it).
    async fn validate(
        &self,
        ctx: &JobCtx,
        db: &PgPool,
        scratch: &str,
        rec: &Record,
        policy: Option<&Policy>,
        started: Instant,
    ) -> Result<Validated, JobError> {
        let job = &ctx.job;
        let mut v = Validated {
            matrix: Vec::new(),
            phases: Vec::new(),
            rto_ms: 0,
            restored: false,
        };
        // KEY_DESTROYED (a shredded organization) fails the drill, not a finding.
        let keyring = self.ctx.reading_keyring(&ctx.pool, &rec.manifest).await?;
        let fetch = staging::verify_sealed(
            &self.ctx,
            &keyring,
            &rec.object_key,
            &rec.manifest,
            &ctx.progress,
        )
        .await;
        match fetch {
            Ok(ms) => {
                v.phases.push(Phase {
                    name: "fetch_sealed",
                    ms,
                });
                v.matrix.push(Row::new(
                    "sealed",
                    true,
                    "size, SHA-256 and every chunk's tag",
                ));
            }
            Err(e) if is_finding(&e) => {
                v.matrix.push(failed_row("sealed", &e));
                v.rto_ms = ms(started.elapsed());
                return Ok(v);
            }
            Err(e) => return Err(e),
        }
        ctx.progress.tick();

        let mut conn = staging::src(PgConnection::connect_with(&db.connect_options()).await)?;
        // The key type as the backup recorded it: the scratch tables are the manifest's,
        // whatever the live catalog says now (and the source is not read).
        let key_type = tenant_key::manifest_key_type(&rec.manifest, &self.ctx.tenant_column)?;
        tenant_key::check_job_key(key_type, &job.tenant_key)?;
        let stage = Stage {
            ctx: self.ctx.clone(),
            db: db.clone(),
            schema: scratch.to_string(),
            tables: Tables::Recreate,
            org: job.organization_id.as_uuid(),
            key: job.tenant_key.clone(),
            key_type,
            keyring,
            progress: ctx.progress.clone(),
        };
        // An earlier attempt of this drill may have left its scratch schema behind.
        stage.drop().await;
        let built = match stage.build(&mut conn, &rec.object_key, &rec.manifest).await {
            Ok(b) => b,
            Err(e) if is_finding(&e) => {
                v.matrix.push(failed_row("loaded", &e));
                v.rto_ms = ms(started.elapsed());
                return Ok(v);
            }
            Err(e) => return Err(e),
        };
        let t = built.timings;
        v.phases.push(Phase {
            name: "schema",
            ms: t.schema_ms,
        });
        v.phases.push(Phase {
            name: "load",
            ms: t.load_ms,
        });
        v.phases.push(Phase {
            name: "checks",
            ms: t.checks_ms + t.constraints_ms,
        });
        v.matrix.extend(
            built
                .checks
                .iter()
                .map(|c| Row::new(c.name, c.passed, c.detail.clone())),
        );
        v.restored = true;
        ctx.progress.tick();

        let asserted = Instant::now();
        if let Some(p) = policy {
            let rows = suite::run_assertions(
                &mut conn,
                scratch,
                &p.assertions,
                self.settings.assertion_timeout,
            )
            .await;
            v.matrix.extend(rows);
        }
        v.phases.push(Phase {
            name: "assertions",
            ms: ms(asserted.elapsed()),
        });
        let _ = conn.close().await;
        v.rto_ms = ms(started.elapsed());
        Ok(v)
    }

    async fn policy(&self, conn: &mut PgConnection, job: &Job) -> Result<Option<Policy>, JobError> {
        match spec(job)?.policy_id {
            None => Ok(None),
            Some(id) => report::policy(conn, job.organization_id.as_uuid(), id)
                .await?
                .map(Some)
                .ok_or_else(|| JobError::permanent("POLICY_NOT_FOUND", "the policy is gone")),
        }
    }
}

impl JobHandler for DrillHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Drill
    }

    fn admit<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        Box::pin(async move {
            let reject = |code, msg: &str| AdmitError::Reject(Rejection::new(code, msg));
            let CommandBody::Drill(d) = &cmd.body else {
                return Err(reject(ReasonCode::InvalidArgument, "not a drill command"));
            };
            match self.target(d) {
                Ok(_) => {}
                Err(TargetError::None) => {
                    return Err(reject(
                        ReasonCode::Conflict,
                        "no drill target: the command names none and DR_DRILL_TARGET is not set",
                    ));
                }
                Err(TargetError::Unknown) => {
                    return Err(reject(
                        ReasonCode::InvalidArgument,
                        "drill.target names no configured restore target",
                    ));
                }
                Err(TargetError::Source) => {
                    return Err(reject(
                        ReasonCode::InvalidArgument,
                        "drill.target names the source database; a drill never writes it",
                    ));
                }
            }
            self.ctx
                .admit_key(&cmd.tenant_key)
                .await
                .map_err(AdmitError::Reject)?;
            let org = cmd.organization_id.as_uuid();
            // Another organization's record or policy answers exactly like a missing one.
            if let Some(id) = d.backup_record_id {
                admit_completed_record(tx, org, id.as_uuid()).await?;
            }
            if let Some(p) = d.policy_id {
                let found: Option<bool> = sqlx::query_scalar(
                    "SELECT true FROM pf_backup_policies WHERE id = $1 AND organization_id = $2",
                )
                .bind(p)
                .bind(org)
                .fetch_optional(&mut *tx)
                .await?;
                if found.is_none() {
                    return Err(reject(ReasonCode::NotFound, "policy not found"));
                }
            }
            // One drill of an organization at a time: they compete for the same target.
            Ok(Admission {
                concurrency_key: format!("drill:{}", cmd.organization_id),
            })
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let started = Instant::now();
            let started_at: DateTime<Utc> = Utc::now();
            let job = &ctx.job;
            let d = spec(job)?;
            let org = job.organization_id.as_uuid();
            let scratch = scratch_schema(job.id.as_uuid());
            let (target, db) = self.target(d).map_err(|_| {
                JobError::permanent("DRILL_TARGET_UNKNOWN", "the drill target is not configured")
            })?;

            let mut meta = ctx.pool.acquire().await?;
            let policy = self.policy(&mut meta, job).await?;
            let report = match report::existing(&mut meta, job).await? {
                Some(r) => r,
                None => {
                    let tier = match (&d.tier, &policy) {
                        (t, _) if !t.is_empty() => t.clone(),
                        (_, Some(p)) => p.tier.clone(),
                        _ => String::new(),
                    };
                    let chosen = select::choose(&mut meta, org, d, &tier, started_at).await?;
                    report::start(
                        &mut meta,
                        report::Start {
                            job,
                            selection: d.selection.as_str(),
                            target,
                            scratch: &scratch,
                            policy: policy.as_ref(),
                            backup_record_id: chosen.backup_record_id,
                            tier: &chosen.tier,
                            snapshot_at: chosen.snapshot_at,
                        },
                    )
                    .await?
                }
            };
            let rec = load_record(&mut meta, org, report.backup_record_id).await?;
            drop(meta);
            tracing::info!(drill_report_id = %report.id, backup_record_id = %report.backup_record_id, target, "drill started");

            let v = match self
                .validate(ctx, db, &scratch, &rec, policy.as_ref(), started)
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    staging::drop_schema(db, &scratch).await;
                    return Err(e);
                }
            };
            let rpo_ms = report
                .snapshot_at
                .map_or(0, |s| (started_at - s).num_milliseconds().max(0) as u64);
            let mut matrix = v.matrix;
            // Objectives are about a scratch copy that exists.
            if let (true, Some(p)) = (v.restored, &policy) {
                matrix.extend(suite::objectives(
                    v.rto_ms,
                    p.rto_objective_ms,
                    rpo_ms,
                    p.rpo_objective_ms,
                ));
            }
            let (dropped, keep_until) = if d.keep_hours > 0 {
                let until = Utc::now() + chrono::Duration::hours(i64::from(d.keep_hours));
                (false, Some(until))
            } else {
                (sweep::drop_scratch(db, &scratch).await.is_ok(), None)
            };
            let outcome = report::Outcome {
                job,
                report: &report,
                selection: d.selection.as_str(),
                target,
                scratch: &scratch,
                policy: policy.as_ref(),
                matrix,
                phases: v.phases,
                rto_ms: v.rto_ms,
                rpo_ms,
                dropped,
                keep_until,
            };
            let mut tx = ctx.pool.begin().await?;
            report::completed(&mut tx, &outcome).await?;
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            tracing::info!(
                drill_report_id = %report.id,
                passed = outcome.passed(),
                rto_ms = v.rto_ms,
                rpo_ms,
                "drill completed"
            );
            Ok(())
        })
    }

    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let d = spec(job).ok();
            let target = d.and_then(|d| self.target(d).ok());
            // A drill given up after its workers died may have left its scratch schema.
            let dropped = match target {
                Some((_, db)) => sweep::drop_scratch(db, &scratch_schema(job.id.as_uuid()))
                    .await
                    .is_ok(),
                None => false,
            };
            let policy = match d.and_then(|d| d.policy_id) {
                Some(id) => report::policy(&mut *tx, job.organization_id.as_uuid(), id)
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            report::failed(
                tx,
                job,
                err,
                d,
                target.map_or("", |(name, _)| name),
                policy.as_ref(),
                dropped,
            )
            .await
        })
    }
}
