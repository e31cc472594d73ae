//! Checks on a staging schema: the backup's columns still fit the live tables, the rows read
//! back equal the rows sent (an order-independent digest, [`crate::engine::rowset`]), every row
//! carries the tenant's id, and foreign keys among the backed-up tables are closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use sqlx::{Connection, PgConnection};
use tokio_util::task::AbortOnDropHandle;

use drfleet_artifact::{Manifest, TableManifest};

use super::load::Loaded;
use super::{Check, ForeignKey, Stage, src};
use crate::engine::catalog::{PIN_RENDERING, quote_ident};
use crate::engine::membership::Reach;
use crate::engine::rowset::{RowDigest, RowSet};
use crate::faults::{self, point};
use crate::handler::JobError;

/// Read-back slices of a large staging table, each on its own connection.
const READBACK_SLICES: i64 = 2;
/// Tables below this many blocks (32 MiB) are read back on one connection.
const READBACK_SLICE_MIN_BLOCKS: i64 = 4096;

/// A dangling-reference count in progress: index into the foreign keys, and the count.
pub(super) type FkCount = (usize, AbortOnDropHandle<Result<i64, JobError>>);

/// Rows of `child` (`ONLY` one staging segment, or a whole staging table) whose key is set
/// but has no row in `parent` (a staging table, its parts included).
pub(super) async fn count_dangling(
    stage: Stage,
    child: String,
    parent: String,
    fk: ForeignKey,
    permits: Arc<tokio::sync::Semaphore>,
) -> Result<i64, JobError> {
    let _permit = permits
        .acquire_owned()
        .await
        .map_err(|_| JobError::permanent("RESTORE_FK_CHECK_FAILED", "check cancelled"))?;
    let (_, ccols, _, pcols) = fk;
    let not_null: Vec<String> = ccols
        .iter()
        .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
        .collect();
    let join: Vec<String> = ccols
        .iter()
        .zip(&pcols)
        .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT count(*) FROM {child} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {})",
        not_null.join(" AND "),
        join.join(" AND ")
    );
    let n = src(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&stage.db)
        .await)?;
    stage.progress.tick();
    Ok(n)
}

/// Digest of the rows of one segment of `table` as PostgreSQL returns them: `qualified` (a
/// staging table without its inheriting parts, or one part) whole, or its `blocks` `[lo, hi)`
/// (`hi` `None`: to the end; a recreated table's segment, see `load::Ranges`). Counts rows of
/// another organization too. A table's last segment is read in block ranges over several
/// connections at once, since the checks wait for it; earlier ones on one connection, since
/// the load goes on beside them.
// Spawned as a task, so it takes its arguments owned.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_back_rows(
    stage: Stage,
    qualified: String,
    table: String,
    columns: Vec<String>,
    tenant: Option<String>,
    seed: u64,
    blocks: Option<(i64, Option<i64>)>,
    last: bool,
    permits: Arc<tokio::sync::Semaphore>,
) -> Result<RowSet, JobError> {
    let _permit = permits
        .acquire_owned()
        .await
        .map_err(|_| JobError::permanent("RESTORE_READBACK_FAILED", "read-back cancelled"))?;
    let org = stage.org.to_string();
    faults::hit(&org, point::READ_BACK).await?;
    // Rows are compared as COPY renders them.
    let key_text = stage.key.copy_text().into_owned();
    // `tenant`: the column holding the tenant id (a path table has none: its rows are scoped
    // by their keys, see `path_scope`).
    let tenant_at = tenant.map(|t| {
        columns.iter().position(|c| *c == t).unwrap_or(usize::MAX) // the column is missing: every row counts as foreign
    });
    let size = async {
        src(sqlx::query_scalar::<_, i64>(
            "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::bigint",
        )
        .bind(&qualified)
        .fetch_one(&stage.db)
        .await)
    };
    // [from, to); `open`: the last range goes on to the end, so nothing past the measured size
    // is missed.
    let (from, to, open) = match blocks {
        Some((lo, Some(hi))) => (lo, hi, false),
        Some((lo, None)) => (lo, size.await?.max(lo), true),
        None => (0, size.await?, true),
    };
    let slices = if last && to - from >= READBACK_SLICE_MIN_BLOCKS {
        READBACK_SLICES
    } else {
        1
    };
    let select: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let select = select.join(", ");
    let parts = (0..slices).map(|i| {
        let lo = from + (to - from) * i / slices;
        let hi = from + (to - from) * (i + 1) / slices;
        let mut cond = Vec::new();
        if lo > 0 {
            cond.push(format!("ctid >= '({lo},0)'::tid"));
        }
        if i + 1 < slices || !open {
            cond.push(format!("ctid < '({hi},0)'::tid"));
        }
        let filter = if cond.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", cond.join(" AND "))
        };
        let sql = format!("COPY (SELECT {select} FROM ONLY {qualified}{filter}) TO STDOUT");
        let (stage, key_text) = (stage.clone(), key_text.clone());
        async move {
            let mut conn = src(stage.db.acquire().await)?;
            let mut tx = src(conn.begin().await)?;
            src(sqlx::raw_sql(PIN_RENDERING).execute(&mut *tx).await)?;
            let mut digest = RowDigest::new(seed);
            if let Some(at) = tenant_at {
                digest = digest.with_tenant(at, &key_text);
            }
            let mut rows = src(tx.copy_out_raw(&sql).await)?;
            while let Some(chunk) = rows.next().await {
                digest.update(&src(chunk)?);
                stage.progress.tick();
            }
            drop(rows);
            src(tx.commit().await)?;
            digest.finish().map_err(|_| {
                JobError::permanent("RESTORE_READBACK_FAILED", "read-back ended inside a row")
            })
        }
    });
    let started = Instant::now();
    let sets = futures::future::try_join_all(parts).await?;
    let set = sets.into_iter().fold(RowSet::default(), RowSet::combine);
    tracing::debug!(
        table,
        segment = qualified,
        slices,
        rows = set.rows,
        ms = started.elapsed().as_millis() as u64,
        "staging table read back"
    );
    Ok(set)
}

/// The tenant database's live columns of `table`: name → (type, needs a value).
async fn live_columns(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Option<HashMap<String, (String, bool)>>, JobError> {
    let rows: Vec<(String, String, bool)> = src(sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
           (a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '') \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await)?;
    Ok((!rows.is_empty()).then(|| rows.into_iter().map(|(n, t, req)| (n, (t, req))).collect()))
}

/// The backup's columns still fit the live tables of `schema`: a column added since takes
/// its default; a dropped or retyped one is an incompatibility, never a silent loss.
pub async fn schema_check(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableManifest],
) -> Result<Check, JobError> {
    let mut problems = Vec::new();
    for t in tables {
        let Some(live) = live_columns(conn, schema, &t.name).await? else {
            problems.push(format!("table {} no longer exists", t.name));
            continue;
        };
        for c in &t.columns {
            match live.get(&c.name) {
                None => problems.push(format!("{}.{} was dropped", t.name, c.name)),
                Some((ty, _)) if *ty != c.data_type => {
                    problems.push(format!("{}.{} changed type", t.name, c.name))
                }
                _ => {}
            }
        }
        for (name, (_, required)) in &live {
            if *required && !t.columns.iter().any(|c| &c.name == name) {
                problems.push(format!("{}.{} was added without a default", t.name, name));
            }
        }
    }
    Ok(Check::new("schema_compatible", problems))
}

/// Foreign keys among the restored tables of `schema`, as (child, child cols, parent, parent
/// cols).
pub(super) async fn foreign_keys(
    conn: &mut PgConnection,
    schema: &str,
    names: &[String],
) -> Result<Vec<ForeignKey>, JobError> {
    src(sqlx::query_as(
        "SELECT cl.relname::text, \
           ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), \
           pl.relname::text, \
           ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) \
         FROM pg_constraint con JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_class pl ON pl.oid = con.confrelid \
         JOIN pg_namespace n ON n.oid = cl.relnamespace JOIN pg_namespace pn ON pn.oid = pl.relnamespace \
         WHERE con.contype = 'f' AND n.nspname = $1 AND pn.nspname = $1 \
           AND cl.relname = ANY($2) AND pl.relname = ANY($2) \
         ORDER BY con.conname",
    )
    .bind(schema)
    .bind(names)
    .fetch_all(&mut *conn)
    .await)
}

/// Child rows in staging whose parent row is not in staging, per foreign key: the counts
/// taken segment by segment during the load, the other keys (to a table loaded later or to
/// itself) counted now.
pub(super) async fn dangling_references(
    stage: &Stage,
    fks: &[ForeignKey],
    mut early: Vec<FkCount>,
) -> Result<Vec<String>, JobError> {
    let sq = quote_ident(&stage.schema);
    let permits = Arc::new(tokio::sync::Semaphore::new(2));
    for (i, fk) in fks.iter().enumerate() {
        if early.iter().all(|(e, _)| *e != i) {
            let n = count_dangling(
                stage.clone(),
                format!("{sq}.{}", quote_ident(&fk.0)),
                format!("{sq}.{}", quote_ident(&fk.2)),
                fk.clone(),
                permits.clone(),
            );
            early.push((i, AbortOnDropHandle::new(tokio::spawn(n))));
        }
    }
    let mut counts = vec![0i64; fks.len()];
    for (i, h) in early {
        counts[i] += h.await.map_err(|_| {
            JobError::permanent("RESTORE_FK_CHECK_FAILED", "foreign key check failed")
        })??;
    }
    Ok(fks
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|((child, _, parent, _), n)| format!("{child} → {parent}: {n} rows"))
        .collect())
}

/// Checks on what was loaded (committed staging tables). Returns them and the rows loaded.
/// `fks`: the foreign keys to count dangling references of (none: the caller checks them
/// otherwise, and `foreign_keys_closed` is not among the checks returned).
pub(super) async fn integrity_checks(
    stage: &Stage,
    manifest: &Manifest,
    mut loaded: Vec<Loaded>,
    fks: Option<&[ForeignKey]>,
    seed: u64,
) -> Result<(Vec<Check>, u64), JobError> {
    faults::hit(&stage.org.to_string(), point::CHECKS).await?;
    let started = Instant::now();
    let early: Vec<_> = loaded
        .iter_mut()
        .flat_map(|l| std::mem::take(&mut l.fk_checks))
        .collect();
    // The foreign-key checks need only committed tables: they run while the last
    // read-backs finish.
    let (digests, dangling) = tokio::join!(
        async {
            let mut counts = Vec::new();
            let mut hashes = Vec::new();
            let mut reread = Vec::new();
            let mut foreign_rows = Vec::new();
            let mut by_name: HashMap<String, Loaded> =
                loaded.into_iter().map(|l| (l.name.clone(), l)).collect();
            let mut rows = 0;
            for t in &manifest.tables {
                let Some(l) = by_name.remove(&t.name) else {
                    counts.push(format!("{}: not loaded", t.name));
                    continue;
                };
                rows += l.copied;
                if l.copied != t.row_count {
                    counts.push(format!(
                        "{}: {} loaded, {} in manifest",
                        t.name, l.copied, t.row_count
                    ));
                }
                let mut back = RowSet::default();
                for h in l.read_back {
                    back = back.combine(h.await.map_err(|_| {
                        JobError::permanent("RESTORE_READBACK_FAILED", "read-back task failed")
                    })??);
                }
                if let (false, Some(w)) = (back.same_rows(&l.sent), l.whole) {
                    // A row outside its segment's block range (see `load::Ranges`): the
                    // verdict is the whole table's.
                    tracing::info!(
                        table = t.name,
                        "segment ranges did not add up; reading the table back whole"
                    );
                    reread.push(format!("{} read back whole", t.name));
                    back = read_back_rows(
                        stage.clone(),
                        w.qualified,
                        t.name.clone(),
                        w.columns,
                        w.tenant,
                        seed,
                        None,
                        true,
                        Arc::new(tokio::sync::Semaphore::new(1)),
                    )
                    .await?;
                }
                if !back.same_rows(&l.sent) {
                    hashes.push(format!("mismatch in {}", t.name));
                }
                if back.foreign != 0 {
                    foreign_rows.push(t.name.clone());
                }
            }
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "staging read back"
            );
            Ok::<_, JobError>((counts, (hashes, reread), foreign_rows, rows))
        },
        async {
            let d = match fks {
                Some(fks) => dangling_references(stage, fks, early).await.map(Some),
                None => Ok(None),
            };
            let off_path = path_scope(stage, manifest).await;
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "staging foreign keys checked"
            );
            Ok::<_, JobError>((d?, off_path?))
        }
    );
    let (counts, (hashes, reread), mut foreign_rows, rows) = digests?;
    let (dangling, off_path) = dangling?;
    foreign_rows.extend(off_path);
    let mut checks = vec![
        Check::new("row_counts", counts),
        // (A table read back whole is noted, passed or not: it explains the time taken.)
        Check {
            name: "content_hashes",
            passed: hashes.is_empty(),
            detail: hashes
                .iter()
                .chain(&reread)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        },
        Check::new("tenant_scoped", foreign_rows),
    ];
    if let Some(dangling) = dangling {
        checks.push(Check::new("foreign_keys_closed", dangling));
    }
    Ok((checks, rows))
}

/// The scope of tables reached by a path (they have no tenant column to check row by row):
/// every staged row must have its parent along the first key of its path in staging — whose
/// rows are scoped in turn — so none with a NULL key or a parent outside the backup is
/// promoted. (`foreign_keys_closed` skips NULL keys, as PostgreSQL does.)
async fn path_scope(stage: &Stage, manifest: &Manifest) -> Result<Vec<String>, JobError> {
    let sq = quote_ident(&stage.schema);
    let mut problems = Vec::new();
    for t in &manifest.tables {
        let Some(Reach::Path { hops, .. }) = &t.reach else {
            continue;
        };
        let Some(h) = hops.first() else { continue };
        let on: Vec<String> = h
            .columns
            .iter()
            .zip(&h.parent_columns)
            .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
            .collect();
        let sql = format!(
            "SELECT count(*) FROM {sq}.{} c WHERE NOT EXISTS (SELECT 1 FROM {sq}.{} p WHERE {})",
            quote_ident(&t.name),
            quote_ident(&h.parent),
            on.join(" AND ")
        );
        let n: i64 = src(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&stage.db)
            .await)?;
        stage.progress.tick();
        if n > 0 {
            problems.push(format!("{}: {n} rows off its path", t.name));
        }
    }
    Ok(problems)
}
