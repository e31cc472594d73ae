//! The validation suite's own parts and the pass/fail matrix: the policy's assertions run
//! against the scratch copy, and the objectives the measured RTO/RPO are held against. The
//! built-in checks come from the staging engine and join the matrix unchanged.
//!
//! An assertion is a query that must return no rows (the dbt test convention). It runs in its
//! own READ ONLY transaction on the drill target, with the scratch schema first on the
//! search path and a statement timeout, wrapped as `SELECT count(*) FROM (<sql>)` in one
//! prepared statement (so it is exactly one query). A failing assertion reports its name and
//! the number of rows; an erroring one its name and SQLSTATE. Never a value of a row.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use drfleet_protocol::validate::DrillAssertion;

use crate::engine::catalog::quote_ident;

/// One row of the pass/fail matrix (as stored in `pf_dr_drill_reports.checks` and carried
/// in `dr_drill_completed`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Row {
    pub fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

/// Name of an assertion's row in the matrix.
pub fn assertion_row_name(name: &str) -> String {
    format!("assertion:{name}")
}

/// The assertion's SQL as the inner query of the count: trailing `;` and blanks removed. A
/// line comment at its end stays harmless: the closing parenthesis goes on its own line.
pub fn counting_sql(sql: &str) -> String {
    let inner = sql.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    format!("SELECT count(*) FROM (\n{inner}\n) AS drill_assertion")
}

/// Run every assertion against `scratch` on `conn` (the drill target), each in its own
/// read-only transaction; one matrix row each, in order.
pub async fn run_assertions(
    conn: &mut PgConnection,
    scratch: &str,
    assertions: &[DrillAssertion],
    timeout: Duration,
) -> Vec<Row> {
    let mut out = Vec::with_capacity(assertions.len());
    for a in assertions {
        let row = match run_one(conn, scratch, a, timeout).await {
            Ok(0) => Row::new(assertion_row_name(&a.name), true, "0 rows"),
            Ok(n) => Row::new(
                assertion_row_name(&a.name),
                false,
                format!("{n} row{}", if n == 1 { "" } else { "s" }),
            ),
            Err(e) => {
                let state = drfleet_infra::error::sqlstate(&e).unwrap_or_else(|| "none".into());
                Row::new(
                    assertion_row_name(&a.name),
                    false,
                    format!("error (sqlstate {state})"),
                )
            }
        };
        out.push(row);
    }
    out
}

async fn run_one(
    conn: &mut PgConnection,
    scratch: &str,
    a: &DrillAssertion,
    timeout: Duration,
) -> Result<i64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // First statement of the transaction: nothing in it may write, whatever the SQL says.
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let ms = timeout.as_millis().max(1);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {ms}"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = {ms}"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL search_path = {}, pg_catalog",
        quote_ident(scratch)
    )))
    .execute(&mut *tx)
    .await?;
    // The operator's SQL, from the policy (validated: bounded, non-empty); a prepared
    // statement holds exactly one query.
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(counting_sql(&a.sql)))
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(n)
}

/// The objective rows of the matrix: `rto_objective` and `rpo_objective`, each only when
/// the policy sets it (ms; 0 = not set).
pub fn objectives(
    rto_ms: u64,
    rto_objective_ms: u64,
    rpo_ms: u64,
    rpo_objective_ms: u64,
) -> Vec<Row> {
    let mut out = Vec::new();
    for (name, measured, objective) in [
        ("rto_objective", rto_ms, rto_objective_ms),
        ("rpo_objective", rpo_ms, rpo_objective_ms),
    ] {
        if objective > 0 {
            out.push(Row::new(
                name,
                measured <= objective,
                format!("measured {measured} ms, objective {objective} ms"),
            ));
        }
    }
    out
}

/// How many earlier passing drills the RTO regression looks at, and the factor over their
/// median that counts as a regression.
pub const REGRESSION_WINDOW: usize = 5;
pub const REGRESSION_FACTOR: f64 = 1.25;
/// Fewer earlier passing drills than this give no baseline (a median of one or two drills is
/// noise, not a trend).
pub const REGRESSION_MIN_BASELINE: usize = 3;

/// The median of `prior` (the RTOs of the policy's last passing drills, newest first) when
/// `rto` exceeds [`REGRESSION_FACTOR`] times it; `None` otherwise or without a baseline.
pub fn regressed(rto: u64, prior: &[u64]) -> Option<u64> {
    let mut last: Vec<u64> = prior.iter().take(REGRESSION_WINDOW).copied().collect();
    if last.len() < REGRESSION_MIN_BASELINE {
        return None;
    }
    last.sort_unstable();
    let n = last.len();
    let median = if n % 2 == 1 {
        last[n / 2]
    } else {
        (last[n / 2 - 1] + last[n / 2]) / 2
    };
    (rto as f64 > REGRESSION_FACTOR * median as f64).then_some(median)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn assertion_sql_is_wrapped_into_one_count() {
        assert_eq!(
            counting_sql("SELECT 1 FROM t; \n"),
            "SELECT count(*) FROM (\nSELECT 1 FROM t\n) AS drill_assertion"
        );
        assert_eq!(
            counting_sql("SELECT 1 -- trailing comment"),
            "SELECT count(*) FROM (\nSELECT 1 -- trailing comment\n) AS drill_assertion"
        );
    }

    #[test]
    fn objectives_compare_measured_with_set_ones_only() {
        assert!(objectives(5, 0, 5, 0).is_empty());
        let rows = objectives(5, 1, 10, 20);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].name.as_str(), rows[0].passed),
            ("rto_objective", false)
        );
        assert_eq!(
            (rows[1].name.as_str(), rows[1].passed),
            ("rpo_objective", true)
        );
        assert!(
            objectives(1, 1, 0, 0)[0].passed,
            "equal meets the objective"
        );
    }

    #[test]
    fn regression_needs_a_baseline_and_a_quarter_over_its_median() {
        assert_eq!(regressed(1000, &[100, 100]), None);
        assert_eq!(regressed(125, &[100, 100, 100]), None);
        assert_eq!(regressed(126, &[100, 100, 100]), Some(100));
        // The median, not the mean: one slow outlier moves nothing.
        assert_eq!(regressed(130, &[100, 10_000, 100, 100]), Some(100));
        // Only the last five count.
        assert_eq!(regressed(130, &[200, 200, 200, 200, 200, 1, 1, 1]), None);
    }

    proptest! {
        #[test]
        fn never_regressed_within_the_factor_of_every_prior(prior in prop::collection::vec(1u64..1_000_000, 0..10), f in 0.0f64..=1.25) {
            let max = *prior.iter().take(REGRESSION_WINDOW).min().unwrap_or(&0);
            let rto = (max as f64 * f) as u64;
            prop_assert_eq!(regressed(rto, &prior), None);
        }
    }
}
