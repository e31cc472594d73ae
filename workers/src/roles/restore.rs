//! The restore role: an artifact back into PostgreSQL, into a staging schema, optionally
//! promoted over the tenant's live rows.
//!
//! 1. `restore_initiated`; the record must be the command's organization's and completed.
//! 2. Sealed pass: the stored object's size and SHA-256 and every chunk's AEAD tag are checked
//!    against the recorded manifest before a single row is written anywhere (it decrypts but
//!    does not decompress, so it costs a fraction of the load).
//! 3. Schema compatibility: a column added since the backup takes its default; a dropped or
//!    retyped one fails the restore before staging exists.
//! 4. Staging `dr_restore_<id>`: each table is created `LIKE` the live one (columns, types,
//!    defaults, constraints, identity, generated) and loaded with `COPY … FROM STDIN` in
//!    foreign-key order. The reader checks the table's row count and SHA-256 against the
//!    manifest before its last transaction commits. A large table loads in segments
//!    (`DR_RESTORE_SEGMENT_MIB` of COPY text, cut at a row boundary), each committed on its
//!    own in a table created in the same transaction: the first is the staging table, later
//!    ones are tables in `dr_restore_<id>_parts` that inherit from it (so reading the staging
//!    table reads them all). Each committed segment is read back (`COPY … TO STDOUT`) and
//!    checked for foreign keys to earlier tables while the next one loads; the digest of the
//!    rows read back must equal that of the rows sent ([`super::rowset`]), and every row must
//!    carry the tenant's id.
//! 5. Integrity checks, stored in `pf_restore_jobs.checks`: row counts, content hashes, tenant
//!    scope, foreign keys closed within the tenant.
//! 6. STAGING: the schema holds exactly the backup.
//!    PROMOTE: in one transaction, lock the live tables against writes (EXCLUSIVE: reads
//!    go on, writers wait for the swap), delete the tenant's rows in reverse FK order, insert
//!    the staged rows in FK order, move identity/serial sequences past the restored maxima,
//!    record the promotion, drop the staging schema, commit. All tables or none.
//!
//! Staging tables are UNLOGGED and loaded with `COPY … WITH (FREEZE)` (allowed because each
//! segment's table is created in its loading transaction): no WAL and no later hint-bit
//! writes for a scratch copy. The live tables a promotion writes stay logged; a database crash
//! empties a kept STAGING schema's tables (restore again).
//!
//! A failed restore drops its staging and parts schemas. A worker killed mid-load leaves them
//! until the job's next attempt (which drops them before loading) or its final failure. The promotion
//! marker (`drfleet_restore.promotions`) commits with the swap, so a job retried after a crash
//! between the swap and its bookkeeping does not promote twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use drfleet_artifact::{ArtifactReader, Manifest, ManifestCheck, TableManifest};
use drfleet_infra::auth::Actor;
use drfleet_protocol::events::timestamp;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{
    CommandBody, ReasonCode, Rejection, RestoreMode, RestoreSpec, ValidCommand,
};

use super::catalog::{PIN_RENDERING, quote_ident};
use super::rowset::{RowDigest, RowSet};
use super::{ChannelReader, RoleCtx, source_error};
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler};
use crate::outbox;

const BUF: usize = 1 << 20;

pub struct RestoreHandler {
    ctx: Arc<RoleCtx>,
}

impl RestoreHandler {
    pub fn new(ctx: Arc<RoleCtx>) -> Self {
        Self { ctx }
    }
}

fn spec(job: &Job) -> Result<&RestoreSpec, JobError> {
    match &job.spec {
        CommandBody::Restore(r) => Ok(r),
        _ => Err(JobError::permanent("SPEC_MISMATCH", "job is not a restore")),
    }
}

/// Staging schema of a job: `dr_restore_` + the random tail of the job id.
pub fn staging_schema(job: &Job) -> String {
    let hex = job.id.as_uuid().simple().to_string();
    format!("dr_restore_{}", &hex[20..])
}

/// Schema of the later segments of large staging tables (see the module docs).
pub fn parts_schema(staging: &str) -> String {
    format!("{staging}_parts")
}

/// Drops a staging schema and its parts schema, whichever exist.
pub(crate) fn drop_staging_sql(staging: &str) -> String {
    format!(
        "DROP SCHEMA IF EXISTS {}, {} CASCADE",
        quote_ident(staging),
        quote_ident(&parts_schema(staging))
    )
}

/// One integrity check, as stored in `pf_restore_jobs.checks`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// The backup record being restored.
struct Record {
    object_key: String,
    manifest: Manifest,
    snapshot_at: Option<DateTime<Utc>>,
}

/// `status, object_key, manifest, snapshot_at` of a backup record.
type RecordRow = (
    String,
    Option<String>,
    Option<serde_json::Value>,
    Option<DateTime<Utc>>,
);

async fn load_record(
    conn: &mut PgConnection,
    org: uuid::Uuid,
    id: uuid::Uuid,
) -> Result<Record, JobError> {
    let row: Option<RecordRow> = sqlx::query_as(
        "SELECT status, object_key, manifest, snapshot_at FROM pf_backup_records WHERE id = $1 AND organization_id = $2",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((status, Some(object_key), Some(manifest), snapshot_at)) =
        row.filter(|r| r.0 == "completed")
    else {
        return Err(JobError::permanent(
            "BACKUP_NOT_RESTORABLE",
            "backup record is missing or not completed",
        ));
    };
    let manifest: Manifest = serde_json::from_value(manifest)
        .map_err(|_| JobError::permanent("MANIFEST_INVALID", "recorded manifest unreadable"))?;
    debug_assert_eq!(status, "completed");
    if manifest.organization_id != org || manifest.backup_record_id != id {
        return Err(JobError::permanent(
            "MANIFEST_BINDING_MISMATCH",
            "manifest belongs to another record",
        ));
    }
    Ok(Record {
        object_key,
        manifest,
        snapshot_at,
    })
}

/// Stream an object into a bounded channel for a blocking reader. Returns the reader and the
/// pump future (run it concurrently with the reader).
pub(crate) async fn object_reader(
    ctx: &RoleCtx,
    key: &str,
) -> Result<
    (
        ChannelReader,
        impl std::future::Future<Output = Result<(), JobError>> + use<>,
    ),
    JobError,
> {
    let path = drfleet_storage::keys::parse(key)?;
    let mut stream = ctx.store.get_stream(&path).await?;
    let (tx, rx) = mpsc::channel(8);
    let pump = async move {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return Ok(()); // the reader stopped; it reports why
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("object store read failed")))
                        .await;
                    return Err(JobError::from(e));
                }
            }
        }
        Ok(())
    };
    Ok((ChannelReader::new(rx), pump))
}

enum Piece {
    Begin(String, Vec<String>),
    Rows(Vec<u8>),
    /// A row boundary after a segment's worth of rows (`DR_RESTORE_SEGMENT_MIB`): commit
    /// what was loaded so far, so that it is read back while the rest of the table loads.
    Cut,
    /// The table's rows matched the manifest (count and SHA-256); the digest of what was sent.
    End(RowSet),
}

/// Read-back slices of a large staging table, each on its own connection.
const READBACK_SLICES: i64 = 2;
/// Tables below this many blocks (32 MiB) are read back on one connection.
const READBACK_SLICE_MIN_BLOCKS: i64 = 4096;

/// One table loaded into staging and committed.
struct Loaded {
    name: String,
    /// Rows `COPY … FROM STDIN` reported.
    copied: u64,
    /// Digest of the rows sent to PostgreSQL.
    sent: RowSet,
    /// Digests of the rows read back, segment by segment, computed while loading goes on.
    read_back: Vec<tokio::task::JoinHandle<Result<RowSet, JobError>>>,
    /// Dangling-reference counts of its segments, by index into the foreign keys, for the
    /// keys whose parent table was loaded before it.
    fk_checks: Vec<FkCount>,
}

/// A dangling-reference count in progress: index into the foreign keys, and the count.
type FkCount = (usize, tokio::task::JoinHandle<Result<i64, JobError>>);

/// A foreign key between two backed-up tables: child, its columns, parent, its columns.
type ForeignKey = (String, Vec<String>, String, Vec<String>);

/// Rows of `child` (`ONLY` one staging segment, or a whole staging table) whose key is set
/// but has no row in `parent` (a staging table, its parts included).
async fn count_dangling(
    ctx: Arc<RoleCtx>,
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
    src(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&ctx.source)
        .await)
}

fn src<T>(r: Result<T, sqlx::Error>) -> Result<T, JobError> {
    r.map_err(|e| source_error(&e))
}

/// Digest of the rows of one segment (`qualified`, a staging table without its inheriting
/// parts, or one part) of `table` as PostgreSQL returns them; counts rows of another
/// organization too. A table's last segment is read in block ranges over several connections
/// at once, since the checks wait for it; earlier ones on one connection, since the load
/// goes on beside them.
#[allow(clippy::too_many_arguments)]
async fn read_back_rows(
    ctx: Arc<RoleCtx>,
    qualified: String,
    table: String,
    columns: Vec<String>,
    seed: u64,
    org: uuid::Uuid,
    last: bool,
    permits: Arc<tokio::sync::Semaphore>,
) -> Result<RowSet, JobError> {
    let _permit = permits
        .acquire_owned()
        .await
        .map_err(|_| JobError::permanent("RESTORE_READBACK_FAILED", "read-back cancelled"))?;
    let tenant_at = columns
        .iter()
        .position(|c| *c == ctx.tenant_column)
        .unwrap_or(usize::MAX); // no tenant column: every row counts as foreign
    let blocks: i64 = src(sqlx::query_scalar(
        "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::bigint",
    )
    .bind(&qualified)
    .fetch_one(&ctx.source)
    .await)?;
    let slices = if last && blocks >= READBACK_SLICE_MIN_BLOCKS {
        READBACK_SLICES
    } else {
        1
    };
    let select: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let select = select.join(", ");
    let org = org.to_string();
    let parts = (0..slices).map(|i| {
        // Block ranges [lo, hi); the last one is open so nothing past the measured size is missed.
        let lo = blocks * i / slices;
        let hi = blocks * (i + 1) / slices;
        let mut cond = Vec::new();
        if i > 0 {
            cond.push(format!("ctid >= '({lo},0)'::tid"));
        }
        if i + 1 < slices {
            cond.push(format!("ctid < '({hi},0)'::tid"));
        }
        let filter = if cond.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", cond.join(" AND "))
        };
        let sql = format!("COPY (SELECT {select} FROM ONLY {qualified}{filter}) TO STDOUT");
        let (ctx, org) = (ctx.clone(), org.clone());
        async move {
            let mut conn = src(ctx.source.acquire().await)?;
            let mut tx = src(conn.begin().await)?;
            src(sqlx::raw_sql(PIN_RENDERING).execute(&mut *tx).await)?;
            let mut digest = RowDigest::new(seed).with_tenant(tenant_at, &org);
            let mut rows = src(tx.copy_out_raw(&sql).await)?;
            while let Some(chunk) = rows.next().await {
                digest.update(&src(chunk)?);
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

impl RestoreHandler {
    /// Pass 1: the stored object's SHA-256, size and every chunk's AEAD tag against the
    /// recorded manifest, before a single row is written anywhere.
    async fn verify_sealed(&self, rec: &Record) -> Result<(), JobError> {
        let (reader, pump) = object_reader(&self.ctx, &rec.object_key).await?;
        let keyring = self.ctx.keyring.clone();
        let manifest = rec.manifest.clone();
        let check = tokio::task::spawn_blocking(move || {
            drfleet_artifact::verify_sealed(reader, &keyring, &manifest)
        });
        let (pumped, checked) = tokio::join!(pump, check);
        let checked = checked
            .map_err(|_| JobError::permanent("ARTIFACT_READER_PANIC", "artifact reader failed"))?;
        match (pumped, checked) {
            (_, Ok(_)) => Ok(()),
            // A store failure surfaces as the reader's I/O error: report the store's.
            (Err(e), Err(_)) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
        }
    }

    /// Pass 2: stream the tables into the staging schema in foreign-key order, one
    /// transaction per segment (a table created UNLOGGED and loaded WITH (FREEZE) in it). The
    /// artifact reader checks each table's count and SHA-256 against the manifest before its
    /// last segment commits; each committed segment is read back and its foreign keys to
    /// earlier tables are checked while the next one loads.
    async fn load(
        &self,
        conn: &mut PgConnection,
        rec: &Record,
        staging: &str,
        seed: u64,
        fks: &[ForeignKey],
    ) -> Result<Vec<Loaded>, JobError> {
        let (reader, pump) = object_reader(&self.ctx, &rec.object_key).await?;
        let keyring = self.ctx.keyring.clone();
        let manifest = rec.manifest.clone();
        let segment_bytes = self.ctx.restore_segment_bytes;
        let (tx, mut rx) = mpsc::channel::<Piece>(4);
        let decode =
            tokio::task::spawn_blocking(move || -> Result<(), drfleet_artifact::ArtifactError> {
                let mut r = ArtifactReader::open(reader, &keyring, manifest.binding())?;
                let mut check = ManifestCheck::new(&manifest, &r)?;
                while let Some(h) = r.next_table()? {
                    check.table_begun(&h)?;
                    let cols = h.columns.iter().map(|c| c.name.clone()).collect();
                    if tx
                        .blocking_send(Piece::Begin(h.name.clone(), cols))
                        .is_err()
                    {
                        return Ok(());
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
                        drfleet_artifact::ArtifactError::CorruptStream {
                            detail: "table ends inside a row",
                        }
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
        let staging_q = quote_ident(staging);
        let parts_q = quote_ident(&parts_schema(staging));
        let live = quote_ident(&self.ctx.tenant_schema);
        let org = rec.manifest.organization_id;
        // Read-backs in flight at once (each may use several connections).
        let permits = Arc::new(tokio::sync::Semaphore::new(2));
        let loading = async {
            let mut loaded = Vec::new();
            while let Some(p) = rx.recv().await {
                let Piece::Begin(name, cols) = p else {
                    return Err(JobError::permanent(
                        "ARTIFACT_CORRUPT_STREAM",
                        "rows outside a table",
                    ));
                };
                let table = quote_ident(&name);
                let quoted: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
                let (mut copied, mut read_back, mut segment) = (0, Vec::new(), 0);
                let mut fk_checks = Vec::new();
                let sent = loop {
                    let mut tx = src(conn.begin().await)?;
                    src(sqlx::raw_sql(PIN_RENDERING).execute(&mut *tx).await)?;
                    // Every segment is a table created in its loading transaction, so that
                    // COPY may FREEZE it: the first is the staging table, later ones inherit
                    // from it (reading the staging table reads them too).
                    let target = if segment == 0 {
                        let sql = format!(
                            "CREATE UNLOGGED TABLE {staging_q}.{table} (LIKE {live}.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING IDENTITY)"
                        );
                        src(sqlx::query(sqlx::AssertSqlSafe(sql))
                            .execute(&mut *tx)
                            .await)?;
                        format!("{staging_q}.{table}")
                    } else {
                        let part = format!(
                            "{parts_q}.{}",
                            quote_ident(&format!("t{}_{segment}", loaded.len()))
                        );
                        let sql = format!(
                            "CREATE SCHEMA IF NOT EXISTS {parts_q}; CREATE UNLOGGED TABLE {part} () INHERITS ({staging_q}.{table})"
                        );
                        src(sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(&mut *tx)
                            .await)?;
                        part
                    };
                    let sql = format!(
                        "COPY {target} ({}) FROM STDIN WITH (FREEZE)",
                        quoted.join(", ")
                    );
                    let mut copy = src(tx.copy_in_raw(&sql).await)?;
                    // Some(None): a cut; Some(Some(digest)): the table's end.
                    let mut outcome = None;
                    while let Some(p) = rx.recv().await {
                        match p {
                            Piece::Rows(b) => {
                                src(copy.send(b).await)?;
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
                    copied += src(copy.finish().await)?;
                    src(tx.commit().await)?;
                    read_back.push(tokio::spawn(read_back_rows(
                        self.ctx.clone(),
                        target.clone(),
                        name.clone(),
                        cols.clone(),
                        seed,
                        org,
                        outcome.is_some(),
                        permits.clone(),
                    )));
                    // Keys to tables loaded before this one can be checked now: their rows
                    // are all committed.
                    for (i, fk) in fks.iter().enumerate() {
                        if fk.0 == name && loaded.iter().any(|l: &Loaded| l.name == fk.2) {
                            let parent = format!("{staging_q}.{}", quote_ident(&fk.2));
                            fk_checks.push((
                                i,
                                tokio::spawn(count_dangling(
                                    self.ctx.clone(),
                                    format!("ONLY {target}"),
                                    parent,
                                    fk.clone(),
                                    permits.clone(),
                                )),
                            ));
                        }
                    }
                    segment += 1;
                    if let Some(set) = outcome {
                        break set;
                    }
                };
                loaded.push(Loaded {
                    name,
                    copied,
                    sent,
                    read_back,
                    fk_checks,
                });
            }
            Ok::<_, JobError>(loaded)
        };
        let (pumped, loaded) = tokio::join!(pump, loading);
        let decoded = decode
            .await
            .map_err(|_| JobError::permanent("ARTIFACT_READER_PANIC", "artifact reader failed"))?;
        let abort = |loaded: &Result<Vec<Loaded>, JobError>| {
            if let Ok(l) = loaded {
                for t in l {
                    t.read_back.iter().for_each(|h| h.abort());
                    t.fk_checks.iter().for_each(|(_, h)| h.abort());
                }
            }
        };
        // The store's error first, then the reader's: they explain a loader's broken stream.
        if let Err(e) = pumped {
            abort(&loaded);
            return Err(e);
        }
        if let Err(e) = decoded {
            abort(&loaded);
            return Err(e.into());
        }
        loaded
    }

    /// The tenant database's live columns of `table`: name → (type, needs a value).
    async fn live_columns(
        &self,
        conn: &mut PgConnection,
        table: &str,
    ) -> Result<Option<HashMap<String, (String, bool)>>, JobError> {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
               (a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '') \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(&self.ctx.tenant_schema)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        Ok((!rows.is_empty()).then(|| rows.into_iter().map(|(n, t, req)| (n, (t, req))).collect()))
    }

    /// The backup's columns still fit the live tables: a column added since takes its
    /// default; a dropped or retyped one is an incompatibility, never a silent loss.
    async fn schema_check(
        &self,
        conn: &mut PgConnection,
        tables: &[TableManifest],
    ) -> Result<Check, JobError> {
        let mut problems = Vec::new();
        for t in tables {
            let Some(live) = self.live_columns(conn, &t.name).await? else {
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
        Ok(Check {
            name: "schema_compatible",
            passed: problems.is_empty(),
            detail: problems.join("; "),
        })
    }

    /// Foreign keys among the restored tables, as (child, child cols, parent, parent cols).
    async fn foreign_keys(
        &self,
        conn: &mut PgConnection,
        names: &[String],
    ) -> Result<Vec<ForeignKey>, JobError> {
        Ok(sqlx::query_as(
            "SELECT cl.relname::text, \
               ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), \
               pl.relname::text, \
               ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) \
             FROM pg_constraint con JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_class pl ON pl.oid = con.confrelid \
             JOIN pg_namespace n ON n.oid = cl.relnamespace \
             WHERE con.contype = 'f' AND n.nspname = $1 AND cl.relname = ANY($2) AND pl.relname = ANY($2) \
             ORDER BY con.conname",
        )
        .bind(&self.ctx.tenant_schema)
        .bind(names)
        .fetch_all(&mut *conn)
        .await?)
    }

    /// Child rows in staging whose parent row is not in staging, per foreign key: the
    /// counts taken segment by segment during the load, the other keys (to a table loaded
    /// later or to itself) counted now.
    async fn dangling_references(
        &self,
        staging: &str,
        fks: &[ForeignKey],
        mut early: Vec<FkCount>,
    ) -> Result<Vec<String>, JobError> {
        let sq = quote_ident(staging);
        let permits = Arc::new(tokio::sync::Semaphore::new(2));
        for (i, fk) in fks.iter().enumerate() {
            if early.iter().all(|(e, _)| *e != i) {
                let n = count_dangling(
                    self.ctx.clone(),
                    format!("{sq}.{}", quote_ident(&fk.0)),
                    format!("{sq}.{}", quote_ident(&fk.2)),
                    fk.clone(),
                    permits.clone(),
                );
                early.push((i, tokio::spawn(n)));
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

    /// Checks on what was loaded (committed staging tables).
    async fn integrity_checks(
        &self,
        rec: &Record,
        staging: &str,
        mut loaded: Vec<Loaded>,
        fks: &[ForeignKey],
    ) -> Result<(Vec<Check>, u64), JobError> {
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
                let mut foreign_rows = Vec::new();
                let mut by_name: HashMap<String, Loaded> =
                    loaded.into_iter().map(|l| (l.name.clone(), l)).collect();
                let mut rows = 0;
                for t in &rec.manifest.tables {
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
                    if !back.same_rows(&l.sent) {
                        hashes.push(t.name.clone());
                    }
                    if back.foreign != 0 {
                        foreign_rows.push(t.name.clone());
                    }
                }
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    "staging read back"
                );
                Ok::<_, JobError>((counts, hashes, foreign_rows, rows))
            },
            async {
                let d = self.dangling_references(staging, fks, early).await;
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    "staging foreign keys checked"
                );
                d
            }
        );
        let (counts, hashes, foreign_rows, rows) = digests?;
        let dangling = dangling?;
        let checks = vec![
            Check {
                name: "row_counts",
                passed: counts.is_empty(),
                detail: counts.join("; "),
            },
            Check {
                name: "content_hashes",
                passed: hashes.is_empty(),
                detail: if hashes.is_empty() {
                    String::new()
                } else {
                    format!("mismatch in {}", hashes.join(", "))
                },
            },
            Check {
                name: "tenant_scoped",
                passed: foreign_rows.is_empty(),
                detail: foreign_rows.join(", "),
            },
            Check {
                name: "foreign_keys_closed",
                passed: dangling.is_empty(),
                detail: dangling.join("; "),
            },
        ];
        Ok((checks, rows))
    }

    /// Replace the tenant's live rows with the staged ones (inside the caller's transaction).
    async fn promote(
        &self,
        conn: &mut PgConnection,
        rec: &Record,
        staging: &str,
        org: uuid::Uuid,
        job: &Job,
        rows: u64,
    ) -> Result<(), JobError> {
        let live = quote_ident(&self.ctx.tenant_schema);
        let sq = quote_ident(staging);
        let tenant = quote_ident(&self.ctx.tenant_column);
        let tables: Vec<String> = rec
            .manifest
            .tables
            .iter()
            .map(|t| format!("{live}.{}", quote_ident(&t.name)))
            .collect();
        // Writers wait for the swap; readers see the old rows until it commits.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        )))
        .execute(&mut *conn)
        .await?;
        for t in rec.manifest.tables.iter().rev() {
            let sql = format!(
                "DELETE FROM {live}.{} WHERE {tenant} = $1",
                quote_ident(&t.name)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org)
                .execute(&mut *conn)
                .await?;
        }
        for t in &rec.manifest.tables {
            let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
            let cols = cols.join(", ");
            let name = quote_ident(&t.name);
            let sql = format!(
                "INSERT INTO {live}.{name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {sq}.{name}"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await?;
            // Identity and serial sequences past the restored maxima.
            for c in &t.columns {
                let seq: Option<String> =
                    sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
                        .bind(format!("{live}.{name}"))
                        .bind(&c.name)
                        .fetch_one(&mut *conn)
                        .await?;
                if let Some(seq) = seq {
                    let col = quote_ident(&c.name);
                    let sql = format!(
                        "SELECT setval($1::regclass, GREATEST((SELECT max({col}) FROM {live}.{name}), (SELECT last_value FROM {seq})), true)"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(&seq)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        sqlx::query(
            "INSERT INTO drfleet_restore.promotions (restore_job_id, organization_id, backup_record_id, row_count) VALUES ($1, $2, $3, $4)",
        )
        .bind(job.id.as_uuid())
        .bind(org)
        .bind(rec.manifest.backup_record_id)
        .bind(rows as i64)
        .execute(&mut *conn)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(drop_staging_sql(staging)))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn record_checks(&self, ctx: &JobCtx, checks: &[Check]) -> Result<(), JobError> {
        sqlx::query(
            "UPDATE pf_restore_jobs SET checks = $3 WHERE id = $1 AND organization_id = $2",
        )
        .bind(ctx.job.id.as_uuid())
        .bind(ctx.job.organization_id.as_uuid())
        .bind(json!(checks))
        .execute(&ctx.pool)
        .await?;
        Ok(())
    }

    /// Drop a staging schema (best effort: a failed drop is logged; the job's next attempt
    /// or its final failure drops it again).
    async fn drop_staging(&self, staging: &str) {
        let sql = drop_staging_sql(staging);
        let dropped = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.ctx.source),
        )
        .await;
        if !matches!(dropped, Ok(Ok(_))) {
            tracing::warn!(staging, "could not drop the staging schema");
        }
    }

    /// Steps 3–4. Builds the staging schema (committed table by table); any failure drops
    /// it again. Returns restored rows, checks and phase timings.
    async fn restore(
        &self,
        ctx: &JobCtx,
        rec: &Record,
        r: &RestoreSpec,
    ) -> Result<(u64, Vec<Check>), JobError> {
        let job = &ctx.job;
        let org = job.organization_id.as_uuid();
        let staging = staging_schema(job);
        let opts = self.ctx.source.connect_options();
        let mut conn = src(PgConnection::connect_with(&opts).await)?;
        if r.mode == RestoreMode::Promote {
            src(sqlx::raw_sql(
                "CREATE SCHEMA IF NOT EXISTS drfleet_restore; \
                 CREATE TABLE IF NOT EXISTS drfleet_restore.promotions (restore_job_id uuid PRIMARY KEY, organization_id uuid NOT NULL, \
                   backup_record_id uuid NOT NULL, row_count bigint NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now())",
            )
            .execute(&mut conn)
            .await)?;
            // Promoted already by an earlier attempt that died before its bookkeeping?
            let done: Option<i64> = src(sqlx::query_scalar("SELECT row_count FROM drfleet_restore.promotions WHERE restore_job_id = $1 AND organization_id = $2")
                .bind(job.id.as_uuid())
                .bind(org)
                .fetch_optional(&mut conn)
                .await)?;
            if let Some(rows) = done {
                self.drop_staging(&staging).await;
                let checks = vec![Check {
                    name: "promoted",
                    passed: true,
                    detail: "promoted by an earlier attempt".into(),
                }];
                return Ok((rows as u64, checks));
            }
        }
        let mut checks = vec![self.schema_check(&mut conn, &rec.manifest.tables).await?];
        if !checks[0].passed {
            self.record_checks(ctx, &checks).await?;
            return Err(JobError::permanent(
                "RESTORE_SCHEMA_INCOMPATIBLE",
                "backup columns were dropped or retyped in the live schema",
            ));
        }
        // An earlier attempt of this job may have left its staging schema behind.
        self.drop_staging(&staging).await;
        let built = self.build_staging(&mut conn, rec, &staging).await;
        let (staged, rows) = match built {
            Ok(b) => b,
            Err(e) => {
                drop(conn);
                self.drop_staging(&staging).await;
                return Err(e);
            }
        };
        checks.extend(staged);
        if checks.iter().any(|c| !c.passed) {
            self.drop_staging(&staging).await;
            self.record_checks(ctx, &checks).await?;
            return Err(JobError::permanent(
                "RESTORE_INTEGRITY_CHECK_FAILED",
                "an integrity check failed",
            ));
        }
        if r.mode == RestoreMode::Promote {
            let started = Instant::now();
            let promoted = async {
                let mut tx = src(conn.begin().await)?;
                src(sqlx::raw_sql(PIN_RENDERING).execute(&mut *tx).await)?;
                self.promote(&mut tx, rec, &staging, org, job, rows).await?;
                src(tx.commit().await)
            }
            .await;
            if let Err(e) = promoted {
                drop(conn);
                self.drop_staging(&staging).await;
                return Err(e);
            }
            tracing::info!(
                promote_ms = started.elapsed().as_millis() as u64,
                "restore promoted"
            );
            checks.push(Check {
                name: "promoted",
                passed: true,
                detail: String::new(),
            });
        }
        Ok((rows, checks))
    }

    /// Create the staging schema, load it and check it.
    async fn build_staging(
        &self,
        conn: &mut PgConnection,
        rec: &Record,
        staging: &str,
    ) -> Result<(Vec<Check>, u64), JobError> {
        let started = Instant::now();
        let sq = quote_ident(staging);
        src(
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {sq}")))
                .execute(&mut *conn)
                .await,
        )?;
        // Per-restore seed of the row digests (see `rowset`).
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        let names: Vec<String> = rec.manifest.tables.iter().map(|t| t.name.clone()).collect();
        let fks = self.foreign_keys(conn, &names).await?;
        let loaded = self.load(conn, rec, staging, seed, &fks).await?;
        let load_ms = started.elapsed().as_millis() as u64;
        let out = self.integrity_checks(rec, staging, loaded, &fks).await?;
        tracing::info!(
            load_ms,
            checks_ms = started.elapsed().as_millis() as u64 - load_ms,
            "restore staged"
        );
        Ok(out)
    }
}

impl JobHandler for RestoreHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Restore
    }

    fn admit<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        if let CommandBody::StagingDiscard(_) = &cmd.body {
            return super::staging_ttl::admit_discard(tx, cmd);
        }
        Box::pin(async move {
            let CommandBody::Restore(r) = &cmd.body else {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "not a restore command",
                )));
            };
            if r.target.is_some() {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "restore.target names no configured target",
                )));
            }
            // Another organization's record answers exactly like a missing one.
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM pf_backup_records WHERE id = $1 AND organization_id = $2",
            )
            .bind(r.backup_record_id.as_uuid())
            .bind(cmd.organization_id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
            match status.as_deref() {
                None => Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::NotFound,
                    "backup record not found",
                ))),
                Some("completed") => Ok(Admission {
                    concurrency_key: format!("restore:{}", cmd.organization_id),
                }),
                Some(_) => Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::Conflict,
                    "backup record is not completed",
                ))),
            }
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        if let CommandBody::StagingDiscard(_) = &ctx.job.spec {
            return super::staging_ttl::run_discard(&self.ctx.source, ctx);
        }
        Box::pin(async move {
            let job = &ctx.job;
            let r = spec(job)?;
            let org = job.organization_id.as_uuid();
            let started_at = Utc::now();
            let staging = staging_schema(job);

            let mut tx = ctx.pool.begin().await?;
            let rec = load_record(&mut tx, org, r.backup_record_id.as_uuid()).await?;
            let fresh = sqlx::query(
                "INSERT INTO pf_restore_jobs (id, organization_id, command_id, backup_record_id, mode, target, operator, status, staging_schema) \
                 VALUES ($1, $2, $3, $4, $5, '', $6, 'initiated', $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(job.id.as_uuid())
            .bind(org)
            .bind(job.command_id.as_uuid())
            .bind(r.backup_record_id.as_uuid())
            .bind(r.mode.as_str())
            .bind(&job.actor)
            .bind(&staging)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if fresh {
                let ev = job.event(Event::RestoreInitiated(v1::RestoreInitiated {
                    restore_job_id: job.id.to_string(),
                    backup_record_id: r.backup_record_id.to_string(),
                    operator: job.actor.clone(),
                    mode: r.mode.to_wire() as i32,
                    snapshot_at: rec.snapshot_at.map(timestamp),
                }));
                outbox::enqueue(&mut tx, &ev).await?;
            }
            tx.commit().await?;

            let verify_started = Instant::now();
            self.verify_sealed(&rec).await?;
            tracing::info!(
                verify_ms = verify_started.elapsed().as_millis() as u64,
                "restore artifact verified"
            );
            let (rows, checks) = self.restore(ctx, &rec, r).await?;

            let finished_at = Utc::now();
            let staging_out = if r.mode == RestoreMode::Staging {
                staging.clone()
            } else {
                String::new()
            };
            let mut tx = ctx.pool.begin().await?;
            sqlx::query(
                "UPDATE pf_restore_jobs SET status = 'completed', checks = $3, row_count = $4, finished_at = now(), \
                   staging_schema = NULLIF($5, '') WHERE id = $1 AND organization_id = $2",
            )
            .bind(job.id.as_uuid())
            .bind(org)
            .bind(json!(checks))
            .bind(rows as i64)
            .bind(&staging_out)
            .execute(&mut *tx)
            .await?;
            super::staging_ttl::stamp_expiry(&mut tx, job.id, self.ctx.staging_ttl).await?;
            let ev = job.event(Event::RestoreCompleted(v1::RestoreCompleted {
                restore_job_id: job.id.to_string(),
                backup_record_id: r.backup_record_id.to_string(),
                operator: job.actor.clone(),
                mode: r.mode.to_wire() as i32,
                started_at: Some(timestamp(started_at)),
                finished_at: Some(timestamp(finished_at)),
                row_count: rows,
                staging_schema: staging_out,
            }));
            outbox::enqueue(&mut tx, &ev).await?;
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            tracing::info!(restore_job_id = %job.id, mode = r.mode.as_str(), rows, "restore completed");
            Ok(())
        })
    }

    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        if let CommandBody::StagingDiscard(_) = &job.spec {
            return super::staging_ttl::discard_failed(tx, job, err);
        }
        Box::pin(async move {
            let (record, mode) = match spec(job) {
                Ok(r) => (r.backup_record_id.to_string(), r.mode.as_str()),
                Err(_) => (String::new(), "staging"),
            };
            let record_uuid = uuid::Uuid::parse_str(&record).unwrap_or_default();
            // A job given up after its workers died may have left its staging schema.
            self.drop_staging(&staging_schema(job)).await;
            sqlx::query(
                "INSERT INTO pf_restore_jobs (id, organization_id, command_id, backup_record_id, mode, operator, status, error_code, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, now()) \
                 ON CONFLICT (id) DO UPDATE SET status = 'failed', error_code = EXCLUDED.error_code, finished_at = now(), staging_schema = NULL \
                 WHERE pf_restore_jobs.organization_id = EXCLUDED.organization_id",
            )
            .bind(job.id.as_uuid())
            .bind(job.organization_id.as_uuid())
            .bind(job.command_id.as_uuid())
            .bind(record_uuid)
            .bind(mode)
            .bind(&job.actor)
            .bind(err.code.as_ref())
            .execute(&mut *tx)
            .await?;
            let ev = job.event(Event::RestoreFailed(v1::RestoreFailed {
                restore_job_id: job.id.to_string(),
                backup_record_id: record,
                operator: job.actor.clone(),
                error_code: err.code.to_string(),
                message: err.message.to_string(),
            }));
            outbox::enqueue(tx, &ev).await
        })
    }
}
