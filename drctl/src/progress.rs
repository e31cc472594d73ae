//! The progress of a command's job while drctl waits for its outcome (`drctl backup`,
//! `restore`, and any command whose job records progress, e.g. a drill): read from the job's
//! `pf_jobs` row (the running job writes rows, bytes and the table at hand at most every
//! 2 s), shown on stderr — an indicatif spinner line on a terminal, plain lines otherwise
//! (one per change). Needs DR_DATABASE_URL; without it drctl waits silently as before.
//!
//! Reusable: [`crate::command::run_with`] does it all for a command; or
//! [`Follower::start`] with the command id, [`Follower::suspend`] around printing, and
//! [`Follower::finish`] once the outcome is in.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use drfleet_infra::config::postgres_url;
use drfleet_protocol::CommandId;

use crate::cli::DbArgs;
use crate::output::human_bytes;

/// A job's row as the display reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobProgress {
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    pub table: Option<String>,
    /// Rows the job will have done when finished, when known (the backup a restore loads).
    pub total_rows: Option<i64>,
}

/// One line describing where the job is, e.g. `backup running: table orders, 12345 rows,
/// 3.2 MiB`.
pub fn describe(p: &JobProgress) -> String {
    let mut s = format!("{} {}", p.kind, p.state);
    if p.attempts > 1 {
        s.push_str(&format!(" (attempt {})", p.attempts));
    }
    let mut parts = Vec::new();
    if let Some(t) = &p.table {
        parts.push(format!("table {t}"));
    }
    match (p.rows, p.total_rows) {
        (Some(r), Some(t)) if t > 0 => parts.push(format!(
            "{r} of {t} rows ({}%)",
            (r.max(0) * 100 / t).min(100)
        )),
        (Some(r), _) => parts.push(format!("{r} rows")),
        (None, _) => {}
    }
    if let Some(b) = p.bytes {
        parts.push(human_bytes(b.max(0) as u64));
    }
    if !parts.is_empty() {
        s.push_str(": ");
        s.push_str(&parts.join(", "));
    }
    s
}

/// kind, state, attempts, progress_rows, progress_bytes, progress_table.
type JobRow = (
    String,
    String,
    i32,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

async fn read(pool: &PgPool, command_id: CommandId) -> Result<Option<JobProgress>, sqlx::Error> {
    let row: Option<JobRow> = sqlx::query_as(
        "SELECT kind, state, attempts, progress_rows, progress_bytes, progress_table \
             FROM pf_jobs WHERE command_id = $1",
    )
    .bind(command_id.as_uuid())
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(kind, state, attempts, rows, bytes, table)| JobProgress {
            kind,
            state,
            attempts,
            rows,
            bytes,
            table,
            total_rows: None,
        }),
    )
}

/// Where progress goes: a spinner on a terminal, plain lines otherwise.
#[derive(Clone)]
enum Display {
    Bar(ProgressBar),
    Lines,
}

impl Display {
    /// A bar of `total_rows` when known, else a spinner.
    fn new(total_rows: Option<u64>) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(total_rows, ProgressDrawTarget::stderr());
            let template = match total_rows {
                Some(_) => "{spinner} [{bar:30}] {percent:>3}% {msg} [{elapsed}]",
                None => "{spinner} {msg} [{elapsed}]",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            Display::Bar(bar)
        } else {
            Display::Lines
        }
    }

    fn show(&self, p: &JobProgress) {
        match self {
            Display::Bar(b) => {
                if let Some(r) = p.rows {
                    b.set_position(r.max(0) as u64);
                }
                b.set_message(describe(p));
            }
            Display::Lines => eprintln!("drctl: progress: {}", describe(p)),
        }
    }

    fn finish(&self) {
        if let Display::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}

/// Follows one command's job until [`Follower::finish`].
pub struct Follower {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    display: Display,
}

impl Follower {
    /// Start following `command_id`'s job; `None` (and a note on stderr) when the metadata
    /// database is not configured or cannot be reached: the wait goes on without progress.
    pub async fn start(
        db: &DbArgs,
        command_id: CommandId,
        rows_of: Option<uuid::Uuid>,
    ) -> Option<Follower> {
        let url = db.database_url.as_deref().filter(|u| !u.is_empty())?;
        let url = match postgres_url("DR_DATABASE_URL", url) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("drctl: no progress display: {e}");
                return None;
            }
        };
        let pool = match drfleet_infra::db::connect(&url, "drctl-progress", 1).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("drctl: no progress display: {e}");
                return None;
            }
        };
        let total_rows: Option<i64> = match rows_of {
            Some(record) => sqlx::query_scalar(
                "SELECT row_count FROM pf_backup_records WHERE id = $1 AND status = 'completed'",
            )
            .bind(record)
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .flatten(),
            None => None,
        };
        let (stop, mut stopped) = oneshot::channel();
        let display = Display::new(total_rows.map(|t| t.max(0) as u64));
        let shown_on = display.clone();
        let task = tokio::spawn(async move {
            let display = shown_on;
            let mut shown: Option<JobProgress> = None;
            loop {
                let last = tokio::select! {
                    _ = &mut stopped => true,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => false,
                };
                // Read once more when stopped: a quick job still shows how it ended.
                if let Ok(Some(mut p)) = read(&pool, command_id).await {
                    p.total_rows = total_rows;
                    if shown.as_ref() != Some(&p) {
                        display.show(&p);
                        shown = Some(p);
                    }
                }
                if last {
                    break;
                }
            }
            display.finish();
            pool.close().await;
        });
        Some(Follower {
            stop,
            task,
            display,
        })
    }

    /// Run `f` (which prints) with the spinner hidden.
    pub fn suspend(&self, f: &mut dyn FnMut()) {
        match &self.display {
            Display::Bar(b) => b.suspend(f),
            Display::Lines => f(),
        }
    }

    /// Stop following and clear the spinner.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_where_the_job_is() {
        let mut p = JobProgress {
            kind: "backup".into(),
            state: "queued".into(),
            attempts: 0,
            ..Default::default()
        };
        assert_eq!(describe(&p), "backup queued");
        p.state = "running".into();
        p.attempts = 2;
        p.table = Some("orders".into());
        p.rows = Some(12345);
        p.bytes = Some(3 << 20);
        assert_eq!(
            describe(&p),
            "backup running (attempt 2): table orders, 12345 rows, 3.0 MiB"
        );
        p.kind = "restore".into();
        p.total_rows = Some(24690);
        assert_eq!(
            describe(&p),
            "restore running (attempt 2): table orders, 12345 of 24690 rows (50%), 3.0 MiB"
        );
    }
}
