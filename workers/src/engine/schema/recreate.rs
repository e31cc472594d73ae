//! Recreating recorded tables from a manifest's [`SchemaDdl`], placed by a [`Placement`], in
//! pg_restore's order: phase 1 (before the data) schemas, types, sequences, tables with their
//! columns, defaults, identity and generated columns and NOT NULL; phase 2 (after the data)
//! primary keys, unique and check constraints, foreign keys, indexes, and the sequences
//! advanced past the rows loaded.
//!
//! The SQL is built by [`super::sql`] from the recorded structure with every identifier
//! quoted; the expressions recorded as text run with the destinations of
//! [`SchemaDdl::search_path`] as the search path. A failure is `SCHEMA_RECREATE_FAILED` naming the object and the SQLSTATE, never SQL
//! text or a value; a lost connection keeps its transient source code.

use std::time::Instant;

use sqlx::{Connection, PgConnection};

use drfleet_artifact::ddl::{ConstraintDdl, ConstraintKind, SchemaDdl, TableDdl};

use super::sql::{
    Placement, constraint_sql, create_sequence_sql, create_table_sql, create_type_sql, index_sql,
    setval_sql,
};
use crate::engine::catalog::quote_ident;
use crate::engine::source_error;
use crate::handler::JobError;

/// What a statement creates, for errors: kind and placed name, never SQL.
struct Object<'a> {
    kind: &'static str,
    name: String,
    /// The constraint or index, for phase 2.
    part: Option<&'a str>,
}

fn recreate_error(e: sqlx::Error, what: &Object<'_>) -> JobError {
    let j = source_error(&e);
    if j.transient {
        return j;
    }
    let state = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| format!(" (SQLSTATE {c})"))
        .unwrap_or_default();
    let part = what.part.map(|p| format!(": {p}")).unwrap_or_default();
    JobError::permanent(
        "SCHEMA_RECREATE_FAILED",
        format!("recreating {} {}{part} failed{state}", what.kind, what.name),
    )
}

/// Run `statements` in one transaction with the placed search path.
async fn run(
    conn: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
    statements: Vec<(Object<'_>, String)>,
) -> Result<(), JobError> {
    let first = Object {
        kind: "schema",
        name: p.schemas(ddl).join(", "),
        part: None,
    };
    let mut tx = conn.begin().await.map_err(|e| recreate_error(e, &first))?;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(p.search_path(ddl))
        .execute(&mut *tx)
        .await
        .map_err(|e| recreate_error(e, &first))?;
    for (what, sql) in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| recreate_error(e, &what))?;
    }
    tx.commit().await.map_err(|e| recreate_error(e, &first))
}

/// Phase 1a: the destination schemas (if missing), types and sequences. Returns its ms.
pub async fn create_types(
    conn: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
) -> Result<u64, JobError> {
    let started = Instant::now();
    let mut statements = Vec::new();
    for s in p.schemas(ddl) {
        statements.push((
            Object {
                kind: "schema",
                name: s.clone(),
                part: None,
            },
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&s)),
        ));
    }
    for t in &ddl.types {
        statements.push((
            Object {
                kind: "type",
                name: format!("{}.{}", p.dest(&t.name.schema), t.name.name),
                part: None,
            },
            create_type_sql(ddl, p, t),
        ));
    }
    for s in &ddl.sequences {
        statements.push((
            Object {
                kind: "sequence",
                name: format!("{}.{}", p.dest(&s.name.schema), s.name.name),
                part: None,
            },
            create_sequence_sql(p, s),
        ));
    }
    run(conn, ddl, p, statements).await?;
    Ok(started.elapsed().as_millis() as u64)
}

fn table_object(p: &Placement, t: &TableDdl) -> Object<'static> {
    Object {
        kind: "table",
        name: format!("{}.{}", p.dest(&t.name.schema), t.name.name),
        part: None,
    }
}

/// Phase 1b: the tables (for a load that creates them itself, see
/// [`create_table_in`]). Returns its ms.
pub async fn create_tables(
    conn: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
    unlogged: bool,
) -> Result<u64, JobError> {
    let started = Instant::now();
    let statements = ddl
        .tables
        .iter()
        .map(|t| (table_object(p, t), create_table_sql(ddl, p, t, unlogged)))
        .collect();
    run(conn, ddl, p, statements).await?;
    Ok(started.elapsed().as_millis() as u64)
}

/// One table created inside the caller's transaction (the staging load creates and loads a
/// table in one transaction, so COPY may freeze its rows). Sets the search path locally.
pub async fn create_table_in(
    tx: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
    t: &TableDdl,
    unlogged: bool,
) -> Result<(), JobError> {
    let what = table_object(p, t);
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(p.search_path(ddl))
        .execute(&mut *tx)
        .await
        .map_err(|e| recreate_error(e, &what))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(create_table_sql(ddl, p, t, unlogged)))
        .execute(&mut *tx)
        .await
        .map_err(|e| recreate_error(e, &what))?;
    Ok(())
}

/// How long phase 2 took.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ConstraintTimings {
    /// Primary, unique, check and foreign keys (validated against the rows loaded).
    pub constraints_ms: u64,
    /// Indexes that back no constraint.
    pub indexes_ms: u64,
    /// Sequences advanced past the rows and attached to their owning columns.
    pub sequences_ms: u64,
}

/// Phase 2, after the data: primary keys, unique and check constraints, foreign keys (in
/// that order over all tables, so every key finds its referenced key), indexes, then the
/// sequences advanced and attached to their owning columns. One transaction.
pub async fn create_constraints(
    conn: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
) -> Result<ConstraintTimings, JobError> {
    let first = Object {
        kind: "schema",
        name: p.schemas(ddl).join(", "),
        part: None,
    };
    let mut tx = conn.begin().await.map_err(|e| recreate_error(e, &first))?;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(p.search_path(ddl))
        .execute(&mut *tx)
        .await
        .map_err(|e| recreate_error(e, &first))?;
    let rank = |c: &ConstraintDdl| match c.def {
        ConstraintKind::PrimaryKey { .. } => 0,
        ConstraintKind::Unique { .. } => 1,
        ConstraintKind::Check { .. } => 2,
        ConstraintKind::ForeignKey { .. } => 3,
    };
    let mut timings = ConstraintTimings::default();
    let started = Instant::now();
    for r in 0..4 {
        for t in &ddl.tables {
            for c in t.constraints.iter().filter(|c| rank(c) == r) {
                let what = Object {
                    part: Some(&c.name),
                    ..table_object(p, t)
                };
                sqlx::raw_sql(sqlx::AssertSqlSafe(constraint_sql(p, t, c)))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| recreate_error(e, &what))?;
            }
        }
    }
    timings.constraints_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    for t in &ddl.tables {
        for i in &t.indexes {
            let what = Object {
                part: Some(&i.name),
                ..table_object(p, t)
            };
            sqlx::raw_sql(sqlx::AssertSqlSafe(index_sql(p, t, i)))
                .execute(&mut *tx)
                .await
                .map_err(|e| recreate_error(e, &what))?;
        }
    }
    timings.indexes_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    for t in &ddl.tables {
        for sql in setval_sql(ddl, p, t) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| recreate_error(e, &table_object(p, t)))?;
        }
    }
    for s in &ddl.sequences {
        let Some((table, column)) = &s.owned_by else {
            continue;
        };
        let Some(t) = ddl.table(table) else { continue };
        let what = Object {
            kind: "sequence",
            name: format!("{}.{}", p.dest(&s.name.schema), s.name.name),
            part: None,
        };
        let sql = format!(
            "ALTER SEQUENCE {} OWNED BY {}.{}",
            p.qualify(&s.name),
            p.qualify(&t.name),
            quote_ident(column)
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| recreate_error(e, &what))?;
    }
    timings.sequences_ms = started.elapsed().as_millis() as u64;
    tx.commit().await.map_err(|e| recreate_error(e, &first))?;
    Ok(timings)
}
