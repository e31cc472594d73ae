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
    // A recreated table gets its constraints after the load: one segment, no parts.
    let segment_bytes = match stage.tables {
        Tables::Recreate => usize::MAX,
        Tables::Like { .. } => stage.ctx.restore_segment_bytes,
    };
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
            let sql = format!(
                "COPY {target} ({}) FROM STDIN WITH (FREEZE)",
                quoted.join(", ")
            );
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
                outcome.is_some(),
                permits.clone(),
            ))));
            // Keys to tables loaded before this one can be checked now: their rows are all
            // committed.
            for (i, fk) in fks.iter().enumerate() {
                if fk.0 == name && loaded.iter().any(|l| l.name == fk.2) {
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
        loaded.push(Loaded {
            name,
            copied,
            sent,
            read_back,
            fk_checks,
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
}
