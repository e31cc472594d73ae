//! A running job's progress: when it last moved forward (the stall watch), and how far it
//! got — rows, bytes and the table at hand — which [`record`] writes to its `pf_jobs` row at
//! most every [`RECORD_EVERY`] (read by `drctl jobs` and the progress display of `drctl
//! backup|restore|drill`). Rows and bytes also count into the process's
//! `drfleet_rows_processed_total` / `drfleet_bytes_processed_total`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use drfleet_protocol::JobId;

/// How often, at most, a job's progress is written to its row.
pub const RECORD_EVERY: Duration = Duration::from_secs(2);

/// When a job last moved forward and how far it got; cheap to clone and to update from any
/// task or thread.
#[derive(Debug, Clone)]
pub struct Progress {
    start: Instant,
    /// Milliseconds after `start` of the last tick.
    last_ms: Arc<AtomicU64>,
    rows: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    table: Arc<Mutex<Option<String>>>,
    /// The process's counters of the job's role (none in unit tests).
    counters: Option<(Counter, Counter)>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::default(),
            rows: Arc::default(),
            bytes: Arc::default(),
            table: Arc::default(),
            counters: None,
        }
    }
}

/// What a job reported so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub rows: u64,
    pub bytes: u64,
    pub table: Option<String>,
}

impl Progress {
    /// Progress whose rows and bytes also count into `rows` and `bytes` (the role's counters).
    pub fn counting(rows: Counter, bytes: Counter) -> Self {
        Self {
            counters: Some((rows, bytes)),
            ..Self::default()
        }
    }

    pub fn tick(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Relaxed);
    }

    /// Time since the last tick (or the start).
    pub fn idle(&self) -> Duration {
        let last = self.last_ms.load(Relaxed);
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// `n` more rows done (a tick).
    pub fn add_rows(&self, n: u64) {
        self.rows.fetch_add(n, Relaxed);
        if let Some((rows, _)) = &self.counters {
            rows.inc_by(n);
        }
        self.tick();
    }

    /// `n` more bytes done (a tick).
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Relaxed);
        if let Some((_, bytes)) = &self.counters {
            bytes.inc_by(n);
        }
        self.tick();
    }

    /// The job moved on to `table` (a name of the tenant schema's catalog; a tick).
    pub fn set_table(&self, table: &str) {
        if let Ok(mut t) = self.table.lock() {
            *t = Some(table.to_string());
        }
        self.tick();
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            rows: self.rows.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            table: self.table.lock().ok().and_then(|t| t.clone()),
        }
    }
}

/// Write `progress` to the job's row every [`RECORD_EVERY`] while it changes, until `stop`.
/// Only while the job is ours and running: a taken-over job's row belongs to its new owner.
pub async fn record(
    pool: PgPool,
    job: JobId,
    owner: Arc<str>,
    progress: Progress,
    stop: CancellationToken,
) {
    let mut written = Snapshot::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECORD_EVERY) => {}
        }
        let now = progress.snapshot();
        if now == written {
            continue;
        }
        let res = sqlx::query(
            "UPDATE pf_jobs SET progress_rows = $3, progress_bytes = $4, progress_table = $5, \
               progress_at = now() \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job.as_uuid())
        .bind(&*owner)
        .bind(i64::try_from(now.rows).unwrap_or(i64::MAX))
        .bind(i64::try_from(now.bytes).unwrap_or(i64::MAX))
        .bind(now.table.as_deref())
        .execute(&pool)
        .await;
        match res {
            Ok(_) => written = now,
            // Progress is informational: a missed write is retried with the next change.
            Err(e) => tracing::debug!(job_id = %job, error = %e, "progress not recorded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_into_the_role_counters() {
        let (rows, bytes) = (Counter::default(), Counter::default());
        let p = Progress::counting(rows.clone(), bytes.clone());
        let q = p.clone();
        q.set_table("orders");
        q.add_rows(3);
        p.add_rows(2);
        p.add_bytes(100);
        assert_eq!(
            p.snapshot(),
            Snapshot {
                rows: 5,
                bytes: 100,
                table: Some("orders".into())
            }
        );
        assert_eq!((rows.get(), bytes.get()), (5, 100));
        assert!(p.idle() < Duration::from_secs(1));
    }
}
