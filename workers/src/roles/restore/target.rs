//! A restore into a named target (DR_RESTORE_TARGETS) that lacks the backed-up tables: they
//! are created from the manifest's DDL in their original schemas (types, sequences, tables)
//! before the load, and their constraints and indexes after the data. A marker in the target
//! (`drfleet_restore.recreations`) commits with the tables, so a retried job knows the tables
//! are its own and still owe their constraints.

use std::time::Instant;

use sqlx::{Connection, PgConnection};

use drfleet_artifact::Manifest;

use crate::engine::RoleCtx;
use crate::engine::schema::{Placement, recreate};
use crate::engine::staging::{self, Check, PhaseTimings, src};
use crate::handler::{Job, JobError};

pub(super) fn unknown_target() -> JobError {
    JobError::permanent(
        "RESTORE_TARGET_UNKNOWN",
        "restore.target names no configured target",
    )
}

/// The marker of tables a restore job created in a target, kept until their constraints
/// exist: a retried job finds its half-made tables and finishes them.
const RECREATIONS_SQL: &str = "CREATE SCHEMA IF NOT EXISTS drfleet_restore; \
     CREATE TABLE IF NOT EXISTS drfleet_restore.recreations (restore_job_id uuid PRIMARY KEY, \
       organization_id uuid NOT NULL, constraints_done boolean NOT NULL DEFAULT false, \
       created_at timestamptz NOT NULL DEFAULT now())";

/// How many of the manifest's tables exist in `schema`.
async fn existing_tables(
    conn: &mut PgConnection,
    schema: &str,
    manifest: &Manifest,
) -> Result<i64, JobError> {
    let names: Vec<&str> = manifest.tables.iter().map(|t| t.name.as_str()).collect();
    src(sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')",
    )
    .bind(schema)
    .bind(&names)
    .fetch_one(&mut *conn)
    .await)
}

/// `Some(done)` when this job created the tables (`done`: their constraints too), or
/// `Some(false)` when any job created them and failed for good before their constraints: the
/// tables are shared, so this restore adopts them and adds what they owe.
async fn recreation_of(conn: &mut PgConnection, job: uuid::Uuid) -> Result<Option<bool>, JobError> {
    src(sqlx::raw_sql(RECREATIONS_SQL).execute(&mut *conn).await)?;
    src(sqlx::query_scalar(
        "SELECT constraints_done FROM drfleet_restore.recreations \
         WHERE restore_job_id = $1 OR NOT constraints_done \
         ORDER BY restore_job_id = $1 DESC LIMIT 1",
    )
    .bind(job)
    .fetch_optional(&mut *conn)
    .await)
}

/// Phase 2 on the recreated live tables, marked done in the same transaction.
pub(super) async fn finish_recreation(
    conn: &mut PgConnection,
    manifest: &Manifest,
    job: uuid::Uuid,
) -> Result<u64, JobError> {
    let ddl = manifest
        .schema
        .as_ref()
        .ok_or_else(staging::schema_not_recorded)?;
    let mut tx = src(conn.begin().await)?;
    let t = recreate::create_constraints(&mut tx, ddl, &Placement::original()).await?;
    src(sqlx::query(
        "UPDATE drfleet_restore.recreations SET constraints_done = true \
         WHERE restore_job_id = $1 OR NOT constraints_done",
    )
    .bind(job)
    .execute(&mut *tx)
    .await)?;
    src(tx.commit().await)?;
    Ok(t.constraints_ms + t.indexes_ms + t.sequences_ms)
}

/// Where the tables are in the database written: `Ok(true)` when this job created them
/// from the manifest (now, or in an earlier attempt whose constraints are still to come).
pub(super) async fn prepare_tables(
    ctx: &RoleCtx,
    conn: &mut PgConnection,
    job: &Job,
    manifest: &Manifest,
    timings: &mut PhaseTimings,
) -> Result<bool, JobError> {
    let started = Instant::now();
    let (id, org) = (job.id.as_uuid(), job.organization_id.as_uuid());
    if let Some(done) = recreation_of(conn, id).await? {
        return Ok(!done);
    }
    if existing_tables(conn, &ctx.tenant_schema, manifest).await? > 0 {
        return Ok(false);
    }
    let ddl = manifest
        .schema
        .as_ref()
        .ok_or_else(staging::schema_not_recorded)?;
    // Types, sequences and tables with the marker, all or nothing.
    let p = Placement::original();
    let mut tx = src(conn.begin().await)?;
    recreate::create_types(&mut tx, ddl, &p).await?;
    recreate::create_tables(&mut tx, ddl, &p, false).await?;
    src(sqlx::query(
        "INSERT INTO drfleet_restore.recreations (restore_job_id, organization_id) VALUES ($1, $2)",
    )
    .bind(id)
    .bind(org)
    .execute(&mut *tx)
    .await)?;
    src(tx.commit().await)?;
    timings.schema_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        tables = ddl.tables.len(),
        types = ddl.types.len(),
        schema_ms = timings.schema_ms,
        "restore target tables created from the manifest"
    );
    Ok(true)
}

pub(super) fn recreated_check() -> Check {
    Check {
        name: "constraints_recreated",
        passed: true,
        detail: "tables created from the manifest; constraints and indexes added after the data"
            .into(),
    }
}
