//! Promotion: the staged rows replace the tenant's live rows, in one transaction.
//!
//! What it guarantees (README "Restore and verify semantics", docs/architecture.md):
//! - Afterwards the tenant's rows in the backed-up tables equal the backup, and nothing else
//!   in the database changed. The swap runs with `session_replication_role = replica`, so
//!   neither user triggers nor the foreign keys' own triggers fire: no trigger effects, no
//!   cascaded deletes or updates, and no per-row key lookups while the live tables are
//!   locked. Foreign-key cycles and self-references promote like any other key.
//! - The tenant's rows are those of its membership ([`membership`]): the tenant column, or
//!   the key path recorded in the manifest (deleted along that path, before its parents);
//!   the tenant root's row is upserted, never deleted, so a deleted tenant comes back whole.
//! - Integrity is kept by set-based checks instead of per-row triggers: the staging checks
//!   (keys closed within the backup), and, inside the swap before it commits,
//!   (a) rows outside the backup that referenced a row the backup does not contain
//!   (`PROMOTE_WOULD_ORPHAN`, naming each referencing table and its count) and
//!   (b) staged rows whose referenced row outside the backup is gone
//!   (`PROMOTE_MISSING_REFERENCED_ROWS`). Either rolls the whole swap back.
//! - Triggers or rules enabled `ALWAYS` or `REPLICA` on a promoted table would fire even so:
//!   such a promotion is refused before anything changes (`PROMOTE_TRIGGERS_WOULD_FIRE`).
//! - Writers to the promoted tables wait for the swap (`EXCLUSIVE`: reads go on); writers
//!   elsewhere that reference a promoted row wait too, since their key check must read it.
//!
//! The worker's database role must be allowed to set `session_replication_role`: a superuser,
//! or on PostgreSQL 15+ `GRANT SET ON PARAMETER session_replication_role TO <role>`. Without
//! it PROMOTE fails with `PROMOTE_PRIVILEGE_MISSING` before staging is built; never weaker.

use std::time::Instant;

use sqlx::{Connection, PgConnection};

use drfleet_artifact::{Manifest, TableManifest};

use super::{Check, Stage, Tables, drop_sql, src};
use crate::engine::catalog::{PIN_RENDERING, quote_ident};
use crate::engine::membership::{self, Reach};
use crate::engine::source_error;
use crate::faults::{self, point};
use crate::handler::JobError;

/// How a promotion went.
#[derive(Debug, Clone, Copy)]
pub struct Promoted {
    /// From holding the live tables' locks to the commit that released them.
    pub lock_ms: u64,
    /// Waiting for the locks (other transactions on the live tables).
    pub lock_wait_ms: u64,
}

/// A foreign key that touches a promoted table, read from the catalog.
#[derive(Debug, sqlx::FromRow)]
struct Key {
    /// Referencing table, `schema.table` quoted.
    child: String,
    /// Referencing table without schema, for messages.
    child_name: String,
    child_partitioned: bool,
    child_promoted: bool,
    child_cols: Vec<String>,
    /// Referenced table, `schema.table` quoted.
    parent: String,
    parent_name: String,
    parent_promoted: bool,
    parent_cols: Vec<String>,
    /// The referencing columns lead some index of the referencing table.
    indexed: bool,
}

const KEYS_SQL: &str = "SELECT format('%I.%I', cn.nspname, c.relname) AS child, c.relname::text AS child_name, \
       c.relkind = 'p' AS child_partitioned, c.oid = ANY($1) AS child_promoted, \
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o) AS child_cols, \
       format('%I.%I', pn.nspname, p.relname) AS parent, p.relname::text AS parent_name, \
       p.oid = ANY($1) AS parent_promoted, \
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) AS parent_cols, \
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = con.conrelid \
               AND (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(con.conkey)] @> con.conkey) AS indexed \
     FROM pg_constraint con \
     JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
     JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
     WHERE con.contype = 'f' AND con.conparentid = 0 AND (con.conrelid = ANY($1) OR con.confrelid = ANY($1)) \
     ORDER BY con.conname";

impl Key {
    /// Rows of the referencing table that match the key are the tenant's own when both sides
    /// are promoted and the key carries the tenant column on both: those rows are replaced by
    /// staged rows, whose keys the staging checks found closed.
    fn within_tenant(&self, tenant_column: &str) -> bool {
        self.child_promoted
            && self
                .child_cols
                .iter()
                .zip(&self.parent_cols)
                .any(|(c, p)| c == tenant_column && p == tenant_column)
    }

    fn child_from(&self) -> String {
        if self.child_partitioned {
            self.child.clone()
        } else {
            format!("ONLY {}", self.child)
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}({}) → {}",
            self.child_name,
            self.child_cols.join(", "),
            self.parent_name
        )
    }
}

async fn promoted_oids(
    stage: &Stage,
    conn: &mut PgConnection,
    manifest: &Manifest,
) -> Result<Vec<sqlx::postgres::types::Oid>, JobError> {
    let names: Vec<&str> = manifest.tables.iter().map(|t| t.name.as_str()).collect();
    src(sqlx::query_scalar(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')",
    )
    .bind(stage.live_schema())
    .bind(&names)
    .fetch_all(&mut *conn)
    .await)
}

async fn keys(
    conn: &mut PgConnection,
    oids: &[sqlx::postgres::types::Oid],
) -> Result<Vec<Key>, JobError> {
    src(sqlx::query_as(KEYS_SQL)
        .bind(oids)
        .fetch_all(&mut *conn)
        .await)
}

/// The worker's database role may set `session_replication_role` (checked before a PROMOTE
/// builds its staging schema, so a missing grant fails at once).
pub async fn check_privilege(conn: &mut PgConnection) -> Result<(), JobError> {
    let mut tx = src(conn.begin().await)?;
    let set = sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await;
    src(tx.rollback().await)?;
    set.map(|_| ()).map_err(privilege_error)
}

fn privilege_error(e: sqlx::Error) -> JobError {
    if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42501") {
        JobError::permanent(
            "PROMOTE_PRIVILEGE_MISSING",
            "the worker's database role may not set session_replication_role (needs superuser, \
             or on PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role)",
        )
    } else {
        source_error(&e)
    }
}

/// Advisory: referencing columns of keys that touch the promoted tables with no index led by
/// them, and the index that would help (the outside-reference check and every delete of a
/// referenced row scan such a table). Never fails a restore.
pub async fn index_advice(
    stage: &Stage,
    conn: &mut PgConnection,
    manifest: &Manifest,
) -> Result<Check, JobError> {
    let oids = promoted_oids(stage, conn, manifest).await?;
    let advice: Vec<String> = keys(conn, &oids)
        .await?
        .iter()
        .filter(|k| !k.indexed)
        .map(|k| {
            let cols: Vec<String> = k.child_cols.iter().map(|c| quote_ident(c)).collect();
            format!(
                "{} has no index: CREATE INDEX ON {} ({})",
                k.describe(),
                k.child,
                cols.join(", ")
            )
        })
        .collect();
    if !advice.is_empty() {
        tracing::warn!(
            advice = advice.join("; "),
            "referencing columns without an index"
        );
    }
    Ok(Check {
        name: "referencing_indexes",
        passed: true,
        detail: advice.join("; "),
    })
}

/// The promotion marker commits with the swap, so a job retried after a crash between the
/// swap and its bookkeeping does not promote twice. Returns the rows of an earlier promotion
/// of this job, if there was one.
pub async fn promoted_before(
    conn: &mut PgConnection,
    job_id: uuid::Uuid,
    org: uuid::Uuid,
) -> Result<Option<i64>, JobError> {
    src(sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS drfleet_restore; \
         CREATE TABLE IF NOT EXISTS drfleet_restore.promotions (restore_job_id uuid PRIMARY KEY, organization_id uuid NOT NULL, \
           backup_record_id uuid NOT NULL, row_count bigint NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *conn)
    .await)?;
    src(sqlx::query_scalar(
        "SELECT row_count FROM drfleet_restore.promotions WHERE restore_job_id = $1 AND organization_id = $2",
    )
    .bind(job_id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await)
}

/// Replace the tenant's live rows with the staged ones and drop the staging schema, in one
/// transaction (see the module docs).
pub async fn promote(
    stage: &Stage,
    conn: &mut PgConnection,
    manifest: &Manifest,
    job_id: uuid::Uuid,
    rows: u64,
) -> Result<Promoted, JobError> {
    let ctx = &stage.ctx;
    let org = stage.org;
    if matches!(stage.tables, Tables::Recreate) {
        return Err(JobError::permanent(
            "PROMOTE_NOT_APPLICABLE",
            "a recreated stage has no live tables to promote into",
        ));
    }
    // The tenant key, bound as text and cast to the column type.
    let key_param = format!("$1::{}", stage.key_type.sql_type());
    let live = quote_ident(stage.live_schema());
    let sq = quote_ident(&stage.schema);
    let mut tx = src(conn.begin().await)?;
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .map_err(privilege_error)?;
    src(sqlx::raw_sql(PIN_RENDERING).execute(&mut *tx).await)?;

    let oids = promoted_oids(stage, &mut tx, manifest).await?;
    let firing: Vec<String> = src(sqlx::query_scalar(
        "SELECT c.relname || '.' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         WHERE t.tgrelid = ANY($1) AND t.tgenabled IN ('A', 'R') \
         UNION ALL \
         SELECT c.relname || '.' || r.rulename FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class \
         WHERE r.ev_class = ANY($1) AND r.ev_type <> '1' AND r.ev_enabled IN ('A', 'R') ORDER BY 1",
    )
    .bind(&oids)
    .fetch_all(&mut *tx)
    .await)?;
    if !firing.is_empty() {
        return Err(JobError::permanent(
            "PROMOTE_TRIGGERS_WOULD_FIRE",
            format!(
                "triggers or rules enabled ALWAYS or REPLICA would fire during promotion: {}",
                firing.join(", ")
            ),
        ));
    }
    let all_keys = keys(&mut tx, &oids).await?;
    // Keys into a promoted table whose referencing rows may outlive the swap.
    let incoming: Vec<&Key> = all_keys
        .iter()
        .filter(|k| k.parent_promoted && !k.within_tenant(&ctx.tenant_column))
        .collect();
    // Keys from a promoted table to a table the backup does not hold.
    let outgoing: Vec<&Key> = all_keys.iter().filter(|k| !k.parent_promoted).collect();
    // Identity and serial sequences, looked up before the tables are locked.
    let mut sequences = Vec::new();
    for t in &manifest.tables {
        let name = format!("{live}.{}", quote_ident(&t.name));
        for c in &t.columns {
            let seq: Option<String> =
                src(sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
                    .bind(&name)
                    .bind(&c.name)
                    .fetch_one(&mut *tx)
                    .await)?;
            if let Some(seq) = seq {
                sequences.push((name.clone(), quote_ident(&c.name), seq));
            }
        }
    }

    let asked = Instant::now();
    let tables: Vec<String> = manifest
        .tables
        .iter()
        .map(|t| format!("{live}.{}", quote_ident(&t.name)))
        .collect();
    src(sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        tables.join(", ")
    )))
    .execute(&mut *tx)
    .await)?;
    let locked = Instant::now();
    stage.progress.tick();

    // Delete the tenant's rows, referencing tables first (the manifest lists referenced ones
    // first), so that a table whose membership is decided through its parents still finds
    // them: tables reached by a path go first, longest path first (a path's tables have
    // shorter ones, so this holds through cycles too). The tenant root's row is never
    // deleted (it is upserted below). Where rows outside may reference the deleted rows,
    // keep their keys.
    let mut deletions: Vec<(&TableManifest, Reach)> = manifest
        .tables
        .iter()
        .rev()
        .map(|t| (t, membership::reach_of(t, &ctx.tenant_column)))
        .collect();
    deletions.sort_by_key(|(_, r)| match r {
        Reach::Path { hops, .. } => std::cmp::Reverse(hops.len()),
        _ => std::cmp::Reverse(0),
    });
    let mut gone = Vec::new();
    for (t, reach) in deletions {
        let name = quote_ident(&t.name);
        let mine = membership::predicate(&reach, &live, "t", &key_param);
        let root = match &reach {
            Reach::Root { column } => Some(column),
            _ => None,
        };
        let mut cols: Vec<&String> = incoming
            .iter()
            // The root's key column never changes (it is the upsert's conflict target).
            .filter(|k| {
                k.parent_name == t.name && root.is_none_or(|c| k.parent_cols != [c.clone()])
            })
            .flat_map(|k| &k.parent_cols)
            .collect();
        cols.sort();
        cols.dedup();
        if root.is_some() && cols.is_empty() {
            continue; // nothing of the root's row can change that rows outside reference
        }
        let sql = if cols.is_empty() {
            format!("DELETE FROM {live}.{name} t WHERE {mine}")
        } else {
            let tmp = format!("dr_gone_{}", gone.len());
            let list: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            let list = list.join(", ");
            src(sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {list} FROM {live}.{name} WITH NO DATA"
            )))
            .execute(&mut *tx)
            .await)?;
            let kept: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
            gone.push((t.name.clone(), tmp.clone(), kept));
            if root.is_some() {
                // Not deleted but updated: its old keys, for the orphan check all the same.
                format!("INSERT INTO pg_temp.{tmp} SELECT {list} FROM {live}.{name} t WHERE {mine}")
            } else {
                format!(
                    "WITH d AS (DELETE FROM {live}.{name} t WHERE {mine} RETURNING {list}) \
                     INSERT INTO pg_temp.{tmp} SELECT {list} FROM d"
                )
            }
        };
        src(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stage.key.as_str())
            .execute(&mut *tx)
            .await)?;
        stage.progress.tick();
    }
    faults::hit(&org.to_string(), point::SWAP).await?;
    for t in &manifest.tables {
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let name = quote_ident(&t.name);
        // The root's row was kept: inserted if missing (a deleted tenant), updated otherwise.
        let upsert = match membership::reach_of(t, &ctx.tenant_column) {
            Reach::Root { column } => {
                let key = quote_ident(&column);
                let set: Vec<String> = cols
                    .iter()
                    .filter(|c| **c != key)
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                if set.is_empty() {
                    format!(" ON CONFLICT ({key}) DO NOTHING")
                } else {
                    format!(" ON CONFLICT ({key}) DO UPDATE SET {}", set.join(", "))
                }
            }
            _ => String::new(),
        };
        let cols = cols.join(", ");
        src(sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {live}.{name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {sq}.{name}{upsert}"
        )))
        .execute(&mut *tx)
        .await)?;
        stage.progress.tick();
    }

    // (a) Rows outside the backup still referencing a key the backup does not bring back.
    let mut orphans = Vec::new();
    for k in &incoming {
        // (The root keeps only the keys that can change: not its key column.)
        let Some((_, tmp, _)) = gone.iter().find(|(t, _, kept)| {
            *t == k.parent_name && k.parent_cols.iter().all(|c| kept.contains(c))
        }) else {
            continue;
        };
        let child: Vec<String> = k
            .child_cols
            .iter()
            .map(|c| format!("r.{}", quote_ident(c)))
            .collect();
        let kept: Vec<String> = k
            .parent_cols
            .iter()
            .map(|c| format!("p.{0} = g.{0}", quote_ident(c)))
            .collect();
        let gone_cols: Vec<String> = k
            .parent_cols
            .iter()
            .map(|c| format!("g.{}", quote_ident(c)))
            .collect();
        let sql = format!(
            "SELECT count(*) FROM {} r WHERE ({}) IN (SELECT {} FROM pg_temp.{tmp} g \
             WHERE NOT EXISTS (SELECT 1 FROM {} p WHERE {}))",
            k.child_from(),
            child.join(", "),
            gone_cols.join(", "),
            k.parent,
            kept.join(" AND ")
        );
        let n: i64 = src(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await)?;
        stage.progress.tick();
        if n > 0 {
            orphans.push(format!("{}: {n} rows", k.describe()));
        }
    }
    if !orphans.is_empty() {
        return Err(JobError::permanent(
            "PROMOTE_WOULD_ORPHAN",
            format!(
                "rows outside the backup reference rows it does not contain: {}",
                orphans.join("; ")
            ),
        ));
    }
    // (b) Staged rows whose referenced row outside the backup is gone.
    let mut missing = Vec::new();
    for k in &outgoing {
        let not_null: Vec<String> = k
            .child_cols
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
            .collect();
        let join: Vec<String> = k
            .child_cols
            .iter()
            .zip(&k.parent_cols)
            .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
            .collect();
        let sql = format!(
            "SELECT count(*) FROM {sq}.{} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})",
            quote_ident(&k.child_name),
            not_null.join(" AND "),
            k.parent,
            join.join(" AND ")
        );
        let n: i64 = src(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await)?;
        stage.progress.tick();
        if n > 0 {
            missing.push(format!("{}: {n} rows", k.describe()));
        }
    }
    if !missing.is_empty() {
        return Err(JobError::permanent(
            "PROMOTE_MISSING_REFERENCED_ROWS",
            format!(
                "backed-up rows reference rows outside the backup that no longer exist: {}",
                missing.join("; ")
            ),
        ));
    }

    for (table, col, seq) in &sequences {
        src(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval($1::regclass, GREATEST((SELECT max({col}) FROM {table}), (SELECT last_value FROM {seq})), true)"
        )))
        .bind(seq)
        .execute(&mut *tx)
        .await)?;
    }
    src(sqlx::query(
        "INSERT INTO drfleet_restore.promotions (restore_job_id, organization_id, backup_record_id, row_count) VALUES ($1, $2, $3, $4)",
    )
    .bind(job_id)
    .bind(org)
    .bind(manifest.backup_record_id)
    .bind(rows as i64)
    .execute(&mut *tx)
    .await)?;
    src(sqlx::query(sqlx::AssertSqlSafe(drop_sql(&stage.schema)))
        .execute(&mut *tx)
        .await)?;
    src(tx.commit().await)?;
    let done = Promoted {
        lock_ms: locked.elapsed().as_millis() as u64,
        lock_wait_ms: (locked - asked).as_millis() as u64,
    };
    crate::metrics::observe_promote_lock(done.lock_ms);
    Ok(done)
}
