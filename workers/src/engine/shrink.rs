//! Backups of tenants that are empty or suddenly shrink.
//!
//! A backup of an organization with no row in any table completes, but says so (`empty`):
//! a mistyped organization id must not look like a protected tenant. A backup whose row
//! count fell sharply against the previous completed backup of the same policy (of the same
//! tier when it has no policy) is flagged `ROW_COUNT_DROP`: mass deletion or ransomware
//! looks exactly like this. Both go on the record and into `backup_completed`; the
//! scheduler's alerts, once they exist, raise them.

use sqlx::PgConnection;

/// `warning_code` of a backup whose row count fell sharply.
pub const ROW_COUNT_DROP: &str = "ROW_COUNT_DROP";
/// `warning_code` of a backup without any row (and no sharp drop to report instead).
pub const EMPTY_BACKUP: &str = "EMPTY_BACKUP";

/// When a fall in rows counts as sharp: more than `percent` % of the previous count *and*
/// more than `min_rows` rows (small tenants fluctuate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropThreshold {
    pub percent: u64,
    pub min_rows: u64,
}

impl DropThreshold {
    /// The default until policies carry their own (issue 18).
    pub const DEFAULT: Self = Self {
        percent: 50,
        min_rows: 1000,
    };

    /// Whether going from `previous` to `current` rows is a sharp drop.
    pub fn is_sharp_drop(&self, previous: u64, current: u64) -> bool {
        let fell = previous.saturating_sub(current);
        fell > self.min_rows
            && u128::from(fell) * 100 > u128::from(previous) * u128::from(self.percent)
    }
}

/// What a completed backup says about its tenant's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrinkage {
    pub empty: bool,
    /// Row count of the previous completed backup of the same policy or tier, if any.
    pub previous_row_count: Option<u64>,
    pub warning_code: Option<&'static str>,
}

impl Shrinkage {
    /// Classify a backup of `rows` rows against the previous one. Without its row in the
    /// tenant root table (DR_TENANT_ROOT) the organization does not exist: empty too.
    pub fn classify(
        rows: u64,
        previous: Option<u64>,
        threshold: DropThreshold,
        root_row_missing: bool,
    ) -> Self {
        let empty = rows == 0 || root_row_missing;
        let dropped = previous.is_some_and(|p| threshold.is_sharp_drop(p, rows));
        let warning_code = if dropped {
            Some(ROW_COUNT_DROP)
        } else if empty {
            Some(EMPTY_BACKUP)
        } else {
            None
        };
        Self {
            empty,
            previous_row_count: previous,
            warning_code,
        }
    }
}

/// The threshold for backups of `policy_id`. Policies carry no threshold yet, so every
/// backup uses [`DropThreshold::DEFAULT`]; this is where a per-policy one will be read.
pub async fn threshold_for(
    _conn: &mut PgConnection,
    _org: uuid::Uuid,
    _policy_id: &str,
) -> Result<DropThreshold, sqlx::Error> {
    Ok(DropThreshold::DEFAULT)
}

/// Row count of the newest completed backup of `org` before `record`, of the same policy
/// (when `policy_id` is set) or of the same tier.
pub async fn previous_row_count(
    conn: &mut PgConnection,
    org: uuid::Uuid,
    record: uuid::Uuid,
    tier: &str,
    policy_id: &str,
) -> Result<Option<u64>, sqlx::Error> {
    let rows: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT row_count FROM pf_backup_records \
         WHERE organization_id = $1 AND id <> $2 AND status = 'completed' \
           AND CASE WHEN $4 = '' THEN tier = $3 ELSE policy_id = $4 END \
         ORDER BY completed_at DESC LIMIT 1",
    )
    .bind(org)
    .bind(record)
    .bind(tier)
    .bind(policy_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(rows.flatten().map(|n| n.max(0) as u64))
}

/// Classify the backup `record` of `rows` rows and store the result on its record, inside
/// the transaction that completes it (so record, event and flags agree).
pub async fn assess(
    tx: &mut PgConnection,
    org: uuid::Uuid,
    record: uuid::Uuid,
    tier: &str,
    policy_id: &str,
    rows: u64,
    root_row_missing: bool,
) -> Result<Shrinkage, sqlx::Error> {
    let previous = previous_row_count(tx, org, record, tier, policy_id).await?;
    let threshold = threshold_for(tx, org, policy_id).await?;
    let s = Shrinkage::classify(rows, previous, threshold, root_row_missing);
    sqlx::query(
        "UPDATE pf_backup_records SET empty = $3, previous_row_count = $4, warning_code = $5 \
         WHERE id = $1 AND organization_id = $2",
    )
    .bind(record)
    .bind(org)
    .bind(s.empty)
    .bind(s.previous_row_count.map(|n| n as i64))
    .bind(s.warning_code)
    .execute(&mut *tx)
    .await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_need_both_the_share_and_the_rows() {
        let t = DropThreshold::DEFAULT;
        assert!(t.is_sharp_drop(10_000, 1_000)); // -90 %
        assert!(!t.is_sharp_drop(10_000, 5_000)); // exactly 50 %: not more
        assert!(t.is_sharp_drop(10_000, 4_999));
        assert!(!t.is_sharp_drop(1_800, 850)); // -53 %, but only 950 rows
        assert!(!t.is_sharp_drop(1_000, 0)); // 1,000 rows: not more than 1,000
        assert!(t.is_sharp_drop(1_001, 0));
        assert!(!t.is_sharp_drop(100, 200)); // growth
        assert!(!t.is_sharp_drop(u64::MAX, u64::MAX / 2 + 1));
        assert!(t.is_sharp_drop(u64::MAX, 0));
    }

    #[test]
    fn classification() {
        let t = DropThreshold::DEFAULT;
        let s = Shrinkage::classify(0, None, t, false);
        assert!(s.empty);
        assert_eq!(s.warning_code, Some(EMPTY_BACKUP));
        let s = Shrinkage::classify(0, Some(5_000), t, false);
        assert!(s.empty);
        assert_eq!(s.warning_code, Some(ROW_COUNT_DROP));
        assert_eq!(s.previous_row_count, Some(5_000));
        let s = Shrinkage::classify(1_000, Some(10_000), t, false);
        assert!(!s.empty);
        assert_eq!(s.warning_code, Some(ROW_COUNT_DROP));
        let s = Shrinkage::classify(9_000, Some(10_000), t, false);
        assert_eq!(s.warning_code, None);
        assert_eq!(Shrinkage::classify(5, None, t, false).warning_code, None);
        // Rows under an organization id the root table does not know: still empty.
        let s = Shrinkage::classify(5, None, t, true);
        assert!(s.empty);
        assert_eq!(s.warning_code, Some(EMPTY_BACKUP));
    }
}
