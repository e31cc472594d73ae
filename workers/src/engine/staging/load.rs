//! Loading: the artifact's tables streamed into the staging schema in foreign-key order.
//!
//! A decoder on a blocking thread decrypts and decompresses the artifact and checks each
//! table's row count and SHA-256 against the manifest before the table's last transaction
//! commits. Each table is created `LIKE` the live one (columns, types, defaults, check
//! constraints, identity, generated) and loaded with `COPY … FROM STDIN`. A large table loads
//! in segments (`DR_RESTORE_SEGMENT_MIB` of COPY text, cut at a row boundary), each committed
//! on its own in a table created in the same transaction, so that every segment may be loaded
//! UNLOGGED `WITH (FREEZE)`: the first is the staging table, later ones are tables in
//! `dr_restore_<id>_parts` that inherit from it (reading the staging table reads them all).
//! Each committed segment is read back and checked for foreign keys to earlier tables while
//! the next one loads.
//!
//! A table recreated from the manifest ([`Tables::Recreate`], a drill) gets its keys after
//! the load, so it must be one table: its later segments are appended to it, each in its own
//! transaction (only the first is frozen), and each committed segment is read back by the
//! block range it filled while the next one loads (see [`Ranges`]). Its foreign keys are
//! checked by recreating them ([`super::Stage::build`]), not here.
//!
//! Ending: the loader owns the receiving end of the decoder's channel, so when the loader
//! fails (a COPY rejected, the connection cut) the channel closes, the decoder stops, the
//! store pump stops, and the helper tasks of the segments already loaded are aborted with
//! their handles. No error leaves anything waiting.

use std::collections::HashMap;
use std::time::Instant;

use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use drfleet_artifact::ddl::SchemaDdl;
use drfleet_artifact::{ArtifactReader, Manifest, ManifestCheck};

use super::checks::{FkCount, count_dangling, read_back_rows};
use super::{ForeignKey, Stage, Tables, object_reader, parts_schema};
use crate::engine::catalog::{PIN_RENDERING, quote_ident};
use crate::engine::membership;
use crate::engine::rowset::{RowDigest, RowSet};
use crate::engine::schema::recreate;
use crate::engine::source_error;
use crate::faults::{self, point};
use crate::handler::JobError;

const BUF: usize = 1 << 20;

enum Piece {
    Begin(String, Vec<String>),
    Rows(Vec<u8>),
    /// A row boundary after a segment's worth of rows (`DR_RESTORE_SEGMENT_MIB`): commit
    /// what was loaded so far, so that it is read back while the rest of the table loads.
    Cut,
    /// The table's rows matched the manifest (count and SHA-256); the digest of what was sent.
    End(RowSet),
}

/// One table loaded into staging and committed.
pub(super) struct Loaded {
    pub name: String,
    /// Rows `COPY … FROM STDIN` reported.
    pub copied: u64,
    /// Digest of the rows sent to PostgreSQL.
    pub sent: RowSet,
    /// Digests of the rows read back, segment by segment, computed while loading goes on.
    pub read_back: Vec<AbortOnDropHandle<Result<RowSet, JobError>>>,
    /// Dangling-reference counts of its segments, by index into the foreign keys, for the
    /// keys whose parent table was loaded before it.
    pub fk_checks: Vec<FkCount>,
    /// A recreated table read back by block ranges: what reads it whole when the ranges do
    /// not add up to the rows sent (see [`Ranges`]).
    pub whole: Option<Whole>,
}

/// A staging table to read back whole: qualified name, columns, tenant column.
pub(super) struct Whole {
    pub qualified: String,
    pub columns: Vec<String>,
    pub tenant: Option<String>,
}

/// The block ranges that read back the segments of one recreated table, all appended to the
/// same heap: segment k is read `[b(k-1), b(k))` once committed, where b(k) is the last block
/// its COPY wrote (the table's size in blocks before its commit, minus one) and b(-1) = 0;
/// the last segment reads from b(n-2) to the end. The ranges partition the heap, so every
/// row is read exactly once: a segment's last block, which the next segment's COPY goes on
/// filling, is read with the next segment, once both are committed. Only a row PostgreSQL
/// places in an earlier block with free space (the free space map) can be missed — the sum
/// then differs from the rows sent and the table is read back whole ([`Whole`]), so a miss
/// costs time, never a wrong verdict.
#[derive(Default)]
struct Ranges {
    /// b(k-1): where the next segment's range starts.
    from: i64,
}

impl Ranges {
    /// The range of a segment just committed; `size`: the table's blocks before its commit
    /// (`None` for the table's last segment: open to the end).
    fn next(&mut self, size: Option<i64>) -> (i64, Option<i64>) {
        let lo = self.from;
        match size {
            Some(n) => {
                let hi = (n - 1).max(lo);
                self.from = hi;
                (lo, Some(hi))
            }
            None => (lo, None),
        }
    }
}

/// A tenant-database error while loading `table`: transient ones (a cut connection) keep the
/// source database's code and are retried; a rejected row (a constraint of the live table)
/// is `RESTORE_LOAD_FAILED`. The message names the table, the segment and the constraint,
/// never a value.
fn load_error(e: sqlx::Error, table: &str, segment: usize) -> JobError {
    let mut j = source_error(&e);
    if !j.transient {
        j.code = "RESTORE_LOAD_FAILED".into();
    }
    let constraint = e
        .as_database_error()
        .and_then(|d| d.constraint())
        .map(|c| format!(", constraint {c}"))
        .unwrap_or_default();
    j.message = format!(
        "loading table {table} (segment {segment}): {}{constraint}",
        j.message
    )
    .into();
    j
}

/// Pass 2: stream the tables into the staging schema (see the module docs).
pub(super) async fn load(
    stage: &Stage,
    conn: &mut PgConnection,
    object_key: &str,
    manifest: &Manifest,
    seed: u64,
    fks: &[ForeignKey],
) -> Result<Vec<Loaded>, JobError> {
    // The column each table's rows must carry the tenant id in (none for a path table).
    let scope: HashMap<String, Option<String>> = manifest
        .tables
        .iter()
        .map(|t| {
            let reach = membership::reach_of(t, &stage.ctx.tenant_column);
            (
                t.name.clone(),
                membership::scope_column(&reach).map(Into::into),
            )
        })
        .collect();
    let (reader, pump) = object_reader(&stage.ctx, object_key, &stage.progress).await?;
    let keyring = stage.keyring.clone();
    let manifest = manifest.clone();
    let segment_bytes = stage.ctx.restore_segment_bytes;
    let ddl = manifest.schema.clone();
    let org = stage.org.to_string();
    let (tx, rx) = mpsc::channel::<Piece>(4);
    let decode = tokio::task::spawn_blocking(move || -> Result<(), JobError> {
        faults::hit_blocking(&org, point::DECODE)?;
        let mut r = ArtifactReader::open(reader, &keyring, manifest.binding())?;
        let mut check = ManifestCheck::new(&manifest, &r)?;
        while let Some(h) = r.next_table()? {
            check.table_begun(&h)?;
            let cols = h.columns.iter().map(|c| c.name.clone()).collect();
            if tx
                .blocking_send(Piece::Begin(h.name.clone(), cols))
                .is_err()
            {
                return Ok(()); // the loader stopped; it reports why
            }
            let mut digest = RowDigest::new(seed);
            let mut buf = Vec::with_capacity(BUF + 256 * 1024);
            let mut segment = 0;
            while let Some(p) = r.next_rows()? {
                digest.update(p);
                buf.extend_from_slice(p);
                if buf.len() < BUF {
                    continue;
                }
                segment += buf.len();
                let cut = if segment >= segment_bytes {
                    memchr::memrchr(b'\n', &buf)
                } else {
                    None
                };
                let mut next = Vec::with_capacity(BUF + 256 * 1024);
                if let Some(i) = cut {
                    next.extend_from_slice(&buf[i + 1..]);
                    buf.truncate(i + 1);
                }
                if tx
                    .blocking_send(Piece::Rows(std::mem::replace(&mut buf, next)))
                    .is_err()
                    || (cut.is_some() && tx.blocking_send(Piece::Cut).is_err())
                {
                    return Ok(());
                }
                if cut.is_some() {
                    segment = 0;
                }
            }
            check.table_ended(&r)?;
            let sent = digest.finish().map_err(|_| {
                JobError::from(drfleet_artifact::ArtifactError::CorruptStream {
                    detail: "table ends inside a row",
                })
            })?;
            if (!buf.is_empty() && tx.blocking_send(Piece::Rows(buf)).is_err())
                || tx.blocking_send(Piece::End(sent)).is_err()
            {
                return Ok(());
            }
        }
        check.finished(&r.finish()?)?;
        Ok(())
    });
    let decode = AbortOnDropHandle::new(decode);
    // `rx` moves into the loader: whatever way the loader ends, the channel closes with it.
    let (pumped, loaded) = tokio::join!(
        pump,
        load_tables(stage, conn, rx, seed, fks, &scope, ddl.as_ref())
    );
    let decoded = decode
        .await
        .map_err(|_| JobError::permanent("ARTIFACT_READER_PANIC", "artifact reader failed"))?;
    // The store's error first, then the reader's: they explain a loader's broken stream.
    // Returning drops what was loaded, and with it the handles of its helper tasks.
    pumped?;
    decoded?;
    loaded
}

/// The loading side of [`load`]: one transaction per segment.
async fn load_tables(
    stage: &Stage,
    conn: &mut PgConnection,
    mut rx: mpsc::Receiver<Piece>,
    seed: u64,
    fks: &[ForeignKey],
    scope: &HashMap<String, Option<String>>,
    ddl: Option<&SchemaDdl>,
) -> Result<Vec<Loaded>, JobError> {
    let org = stage.org.to_string();
    let staging_q = quote_ident(&stage.schema);
    let parts_q = quote_ident(&parts_schema(&stage.schema));
    let live = quote_ident(stage.live_schema());
    let placement = stage.placement();
    let recreate = matches!(stage.tables, Tables::Recreate);
    // Read-backs in flight at once (each may use several connections).
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
    let mut loaded: Vec<Loaded> = Vec::new();
    while let Some(p) = rx.recv().await {
        let Piece::Begin(name, cols) = p else {
            return Err(JobError::permanent(
                "ARTIFACT_CORRUPT_STREAM",
                "rows outside a table",
            ));
        };
        stage.progress.set_table(&name);
        let table = quote_ident(&name);
        let quoted: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
        let (mut copied, mut read_back, mut segment) = (0, Vec::new(), 0);
        let mut fk_checks = Vec::new();
        let mut ranges = Ranges::default();
        let sent = loop {
            let started = Instant::now();
            let e = |err| load_error(err, &name, segment);
            let mut tx = conn.begin().await.map_err(e)?;
            sqlx::raw_sql(PIN_RENDERING)
                .execute(&mut *tx)
                .await
                .map_err(e)?;
            let target = if segment == 0 {
                if let Tables::Recreate = stage.tables {
                    let Some(t) = ddl.and_then(|d| d.table(&name).map(|t| (d, t))) else {
                        return Err(super::schema_not_recorded());
                    };
                    recreate::create_table_in(&mut tx, t.0, &placement, t.1, true).await?;
                } else {
                    let sql = format!(
                        "CREATE UNLOGGED TABLE {staging_q}.{table} (LIKE {live}.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING IDENTITY)"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *tx)
                        .await
                        .map_err(e)?;
                }
                format!("{staging_q}.{table}")
            } else if recreate {
                // Appended to the one table: not frozen (it was created by an earlier
                // transaction), read back by its block range.
                format!("{staging_q}.{table}")
            } else {
                let part = format!(
                    "{parts_q}.{}",
                    quote_ident(&format!("t{}_{segment}", loaded.len()))
                );
                let sql = format!(
                    "CREATE SCHEMA IF NOT EXISTS {parts_q}; CREATE UNLOGGED TABLE {part} () INHERITS ({staging_q}.{table})"
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(e)?;
                part
            };
            if loaded.is_empty() && segment == 0 {
                faults::hit(&org, point::BEFORE_FIRST_SEGMENT).await?;
            }
            let freeze = if segment == 0 || !recreate {
                " WITH (FREEZE)"
            } else {
                ""
            };
            let sql = format!("COPY {target} ({}) FROM STDIN{freeze}", quoted.join(", "));
            let mut copy = tx.copy_in_raw(&sql).await.map_err(e)?;
            // Some(None): a cut; Some(Some(digest)): the table's end.
            let mut outcome = None;
            let mut pieces = 0u64;
            while let Some(p) = rx.recv().await {
                match p {
                    Piece::Rows(b) => {
                        let n = b.len() as u64;
                        copy.send(b).await.map_err(e)?;
                        stage.progress.add_bytes(n);
                        pieces += 1;
                        if pieces == 1 {
                            faults::hit(&org, point::MID_SEGMENT).await?;
                        }
                    }
                    Piece::Cut => {
                        outcome = Some(None);
                        break;
                    }
                    Piece::End(set) => {
                        outcome = Some(Some(set));
                        break;
                    }
                    Piece::Begin(..) => break,
                }
            }
            let Some(outcome) = outcome else {
                // The reader failed (it reports why) or the stream is malformed: this
                // transaction rolls back and the caller drops the schema.
                let _ = copy.abort("artifact ended inside a table").await;
                return Err(JobError::permanent(
                    "ARTIFACT_CORRUPT_STREAM",
                    "artifact ended inside a table",
                ));
            };
            let rows = copy.finish().await.map_err(e)?;
            copied += rows;
            // A recreated table's segment: the blocks it filled, before another can extend it.
            let blocks = match (recreate, &outcome) {
                (false, _) => None,
                (true, Some(_)) => Some(ranges.next(None)),
                (true, None) => {
                    let size: i64 = sqlx::query_scalar(
                        "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::bigint",
                    )
                    .bind(&target)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(e)?;
                    Some(ranges.next(Some(size)))
                }
            };
            tx.commit().await.map_err(e)?;
            stage.progress.add_rows(rows);
            tracing::debug!(
                table = name,
                segment,
                ms = started.elapsed().as_millis() as u64,
                "staging segment committed"
            );
            read_back.push(AbortOnDropHandle::new(tokio::spawn(read_back_rows(
                stage.clone(),
                target.clone(),
                name.clone(),
                cols.clone(),
                scope.get(&name).cloned().flatten(),
                seed,
                blocks,
                outcome.is_some(),
                permits.clone(),
            ))));
            // Keys to tables loaded before this one can be checked now: their rows are all
            // committed. (A recreated table's keys are checked by recreating them.)
            for (i, fk) in fks.iter().enumerate() {
                if !recreate && fk.0 == name && loaded.iter().any(|l| l.name == fk.2) {
                    let parent = format!("{staging_q}.{}", quote_ident(&fk.2));
                    fk_checks.push((
                        i,
                        AbortOnDropHandle::new(tokio::spawn(count_dangling(
                            stage.clone(),
                            format!("ONLY {target}"),
                            parent,
                            fk.clone(),
                            permits.clone(),
                        ))),
                    ));
                }
            }
            segment += 1;
            if let Some(set) = outcome {
                break set;
            }
            faults::hit(&org, point::BETWEEN_SEGMENTS).await?;
        };
        let whole = recreate.then(|| Whole {
            qualified: format!("{staging_q}.{table}"),
            columns: cols.clone(),
            tenant: scope.get(&name).cloned().flatten(),
        });
        loaded.push(Loaded {
            name,
            copied,
            sent,
            read_back,
            fk_checks,
            whole,
        });
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_error_names_table_and_segment_and_keeps_transient_ones_retryable() {
        let e = load_error(sqlx::Error::PoolTimedOut, "orders", 3);
        assert!(e.transient);
        assert_eq!(e.code, "SOURCE_DATABASE_ERROR");
        assert!(e.message.starts_with("loading table orders (segment 3): "));
        let e = load_error(sqlx::Error::RowNotFound, "orders", 0);
        assert!(!e.transient);
        assert_eq!(e.code, "RESTORE_LOAD_FAILED");
    }

    #[test]
    fn segment_ranges_partition_the_heap_and_hand_each_last_block_to_the_next_segment() {
        let mut r = Ranges::default();
        // Segments ending at 100, 250 and 251 blocks, then the last one.
        assert_eq!(r.next(Some(100)), (0, Some(99)));
        assert_eq!(r.next(Some(250)), (99, Some(249)));
        assert_eq!(r.next(Some(251)), (249, Some(250)));
        assert_eq!(r.next(None), (250, None));
        // A segment that filled no new block (or an empty first one) reads nothing itself.
        let mut r = Ranges::default();
        assert_eq!(r.next(Some(0)), (0, Some(0)));
        assert_eq!(r.next(Some(1)), (0, Some(0)));
        assert_eq!(r.next(None), (0, None));
    }
}
