//! One evaluation: settle finished slots, publish due backups, rotate verifies, publish due
//! drills, watch freshness — in ONE transaction under a transaction-scoped advisory lock, so schedulers
//! running side by side take turns (the in-flight count each one reads is exact) and a killed
//! one releases its turn with its connection.

use chrono::Utc;
use sqlx::PgPool;

use crate::commands::Minter;
use crate::drill::{self, DrillReport};
use crate::due::{self, DueReport};
use crate::retention::{self, RetentionReport};
use crate::verify::{self, VerifyReport};
use crate::watch::{self, WatchReport};

/// Why a tick failed; its transaction rolled back and the next tick tries again.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error("metadata database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Mint(#[from] drfleet_infra::auth::MintError),
}

/// Advisory lock key of the decision ("drschd").
const DECIDE_LOCK: i64 = 0x6472_7363_6864;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    /// Another scheduler is deciding right now.
    NotOurTurn,
    Done(TickReport),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub settled: u64,
    pub backups: DueReport,
    pub verifies: VerifyReport,
    pub drills: DrillReport,
    pub alerts: WatchReport,
    pub retention: RetentionReport,
}

pub struct Decider {
    pub pool: PgPool,
    pub minter: Minter,
    pub max_in_flight: u32,
    pub lost_after: std::time::Duration,
    /// DR_RETENTION_INTERVAL_SECS.
    pub retention_interval: std::time::Duration,
}

impl Decider {
    #[tracing::instrument(skip_all, err)]
    pub async fn tick(&self) -> Result<TickOutcome, TickError> {
        let mut tx = self.pool.begin().await?;
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(DECIDE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !ours {
            return Ok(TickOutcome::NotOurTurn);
        }
        let now = Utc::now();
        let settled = due::settle(&mut tx, self.lost_after).await?;
        let backups = due::publish_due(&mut tx, &self.minter, self.max_in_flight, now).await?;
        let verifies = verify::rotate(&mut tx, &self.minter, self.max_in_flight, now).await?;
        let drills = drill::publish(&mut tx, &self.minter, self.max_in_flight, now).await?;
        let alerts = watch::watch(&mut tx, now).await?;
        let retention =
            retention::publish(&mut tx, &self.minter, self.retention_interval, now).await?;
        tx.commit().await?;
        Ok(TickOutcome::Done(TickReport {
            settled,
            backups,
            verifies,
            drills,
            alerts,
            retention,
        }))
    }
}
