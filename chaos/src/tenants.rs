//! The tenants' data in the run's source database, changed only by the harness and only at
//! moments it controls, and the harness's own digest of each tenant's rows.
//!
//! Schema (like the tests'): `customers` and `orders` carry the tenant column, `order_lines`
//! reaches a tenant through its foreign key to `orders`, `global_settings` is nobody's.
//! A digest is the md5 of each table's rows as text, sorted, for one tenant: equal digests
//! mean equal rows (ids included).

use std::sync::atomic::{AtomicI64, Ordering};

use sqlx::PgPool;
use uuid::Uuid;

use crate::rng::Rng;

const DDL: &str = r#"
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    doc jsonb,
    amount numeric(20, 4),
    tags text[]
);
CREATE INDEX customers_org ON customers (organization_id);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    organization_id uuid NOT NULL,
    customer_id bigint NOT NULL REFERENCES customers(id),
    total numeric,
    note text
);
CREATE INDEX orders_org ON orders (organization_id);
CREATE TABLE order_lines (
    order_id bigint NOT NULL REFERENCES orders(id),
    line_no integer NOT NULL,
    sku text NOT NULL,
    qty integer NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE TABLE global_settings (k text PRIMARY KEY, v text);
INSERT INTO global_settings VALUES ('owner', 'nobody''s rows: never backed up or restored');
"#;

/// Ids are global across tenants (primary keys); handed out by the harness.
pub struct Ids(AtomicI64);

impl Ids {
    pub fn new() -> Self {
        Self(AtomicI64::new(1))
    }
    /// A block of `n` fresh ids; returns the first.
    fn block(&self, n: i64) -> i64 {
        self.0.fetch_add(n.max(1), Ordering::Relaxed)
    }
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

/// The guard: a drill never writes the source database, not even rows equal to what is
/// there (which no digest would see). Every connection of a drill worker carries
/// `chaos.writer=drill`; a statement trigger on each table and an event trigger for DDL note
/// any write or schema change such a session makes, whatever it writes and whether or not
/// it is undone later. The DDL trigger fires ALWAYS (even under
/// `session_replication_role = replica`); the table triggers keep the default, since a
/// promotion refuses tables with ALWAYS triggers (PROMOTE_TRIGGERS_WOULD_FIRE). The log
/// lives in its own schema, outside the tenant tables. The drill target gets the DDL part
/// too: there, the drills' own scratch schemas show the marking reaches their sessions.
const GUARD_DDL: &str = r#"
CREATE SCHEMA chaos;
CREATE TABLE chaos.drill_writes (at timestamptz NOT NULL DEFAULT clock_timestamp(), what text NOT NULL);
CREATE FUNCTION chaos.note_drill_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('chaos.writer', true) = 'drill' THEN
    INSERT INTO chaos.drill_writes (what) VALUES (TG_OP || ' ' || TG_TABLE_NAME);
  END IF;
  RETURN NULL;
END $$;
CREATE FUNCTION chaos.note_drill_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('chaos.writer', true) = 'drill' THEN
    INSERT INTO chaos.drill_writes (what) VALUES (tg_tag);
  END IF;
END $$;
CREATE EVENT TRIGGER chaos_drill_ddl ON ddl_command_end EXECUTE FUNCTION chaos.note_drill_ddl();
ALTER EVENT TRIGGER chaos_drill_ddl ENABLE ALWAYS;
"#;
const GUARD_TABLES: &str = r#"
CREATE TRIGGER chaos_drill_write AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON customers
  FOR EACH STATEMENT EXECUTE FUNCTION chaos.note_drill_write();
CREATE TRIGGER chaos_drill_write AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON orders
  FOR EACH STATEMENT EXECUTE FUNCTION chaos.note_drill_write();
CREATE TRIGGER chaos_drill_write AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON order_lines
  FOR EACH STATEMENT EXECUTE FUNCTION chaos.note_drill_write();
CREATE TRIGGER chaos_drill_write AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON global_settings
  FOR EACH STATEMENT EXECUTE FUNCTION chaos.note_drill_write();
"#;

/// The tenants' tables and the guard in the source; the guard's DDL part in the drill target.
pub async fn create_schema(src: &PgPool, drill_target: &PgPool) -> sqlx::Result<()> {
    sqlx::raw_sql(DDL).execute(src).await?;
    sqlx::raw_sql(GUARD_DDL).execute(src).await?;
    sqlx::raw_sql(GUARD_TABLES).execute(src).await?;
    sqlx::raw_sql(GUARD_DDL).execute(drill_target).await?;
    Ok(())
}

/// Prove the guard sees what it must (so a 0 means something): a marked session's no-op
/// write and a DDL statement are both noted, an unmarked session's are not. `marked_url`
/// reaches the source as a drill worker does. The notes are removed afterwards.
pub async fn check_guard(src: &PgPool, marked_url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let noop = "UPDATE global_settings SET v = v WHERE false";
    let ddl = "CREATE TEMP TABLE chaos_guard_probe (x int)";
    sqlx::query(noop).execute(src).await?;
    let mut marked = sqlx::PgConnection::connect(marked_url).await?;
    sqlx::query(noop).execute(&mut marked).await?;
    sqlx::query(ddl).execute(&mut marked).await?;
    let _ = marked.close().await;
    let noted: Vec<String> = sqlx::query_scalar(
        "WITH d AS (DELETE FROM chaos.drill_writes RETURNING what) SELECT what FROM d ORDER BY 1",
    )
    .fetch_all(src)
    .await?;
    anyhow::ensure!(
        noted == ["CREATE TABLE", "UPDATE global_settings"],
        "the source's drill-write guard does not work as intended (noted {noted:?})"
    );
    Ok(())
}

/// What drill sessions wrote (the guard's notes) in `db`.
pub async fn drill_writes(db: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT at::text || ' ' || what FROM chaos.drill_writes ORDER BY at")
        .fetch_all(db)
        .await
}

/// Sizes (customers) of `n` tenants: mostly small, some medium, a few large.
pub fn sizes(rng: &mut Rng, n: u32, soak: bool) -> Vec<i64> {
    let big = if soak { 20_000 } else { 4_000 };
    (0..n)
        .map(|i| match i % 8 {
            0 => big + rng.range(0, 500) as i64,
            1 | 2 => 400 + rng.range(0, 400) as i64,
            _ => 10 + rng.range(0, 60) as i64,
        })
        .collect()
}

/// Insert a tenant of `customers` customers, half as many orders, two lines each.
pub async fn seed(src: &PgPool, ids: &Ids, org: Uuid, customers: i64) -> sqlx::Result<()> {
    let orders = (customers / 2).max(1);
    let c0 = ids.block(customers);
    let o0 = ids.block(orders);
    let mut tx = src.begin().await?;
    sqlx::query(
        "INSERT INTO customers (id, organization_id, name, doc, amount, tags) \
         SELECT $2 + g, $1, 'customer ' || g || E' \\ \"q\"\ttab', \
                jsonb_build_object('g', g, 'nested', jsonb_build_object('x', g % 7)), \
                (g * 1.25)::numeric(20,4), ARRAY['t' || (g % 3), NULL] \
         FROM generate_series(0, $3 - 1) g",
    )
    .bind(org)
    .bind(c0)
    .bind(customers)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO orders (id, organization_id, customer_id, total, note) \
         SELECT $2 + g, $1, $3 + (g % $4), g * 3.5, md5(g::text) FROM generate_series(0, $5 - 1) g",
    )
    .bind(org)
    .bind(o0)
    .bind(c0)
    .bind(customers)
    .bind(orders)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_no, sku, qty) \
         SELECT o.id, l, 'sku-' || (o.id % 97), l * 2 FROM orders o, generate_series(1, 2) l \
         WHERE o.organization_id = $1",
    )
    .bind(org)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Move a tenant to its next version: some rows updated, some deleted, some added, in one
/// transaction.
pub async fn mutate(src: &PgPool, ids: &Ids, org: Uuid, version: u64) -> sqlx::Result<()> {
    let k = (version % 5) as i64;
    let mut tx = src.begin().await?;
    sqlx::query(
        "UPDATE customers SET name = name || ' v' || $2, amount = amount + 1 \
         WHERE organization_id = $1 AND id % 5 = $3",
    )
    .bind(org)
    .bind(version as i64)
    .bind(k)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM order_lines WHERE line_no = 2 AND order_id IN \
         (SELECT id FROM orders WHERE organization_id = $1 AND id % 7 = $2)",
    )
    .bind(org)
    .bind(k)
    .execute(&mut *tx)
    .await?;
    let c = ids.block(1);
    let o = ids.block(1);
    sqlx::query(
        "INSERT INTO customers (id, organization_id, name, doc, amount, tags) \
         VALUES ($2, $1, 'added in v' || $3, '{\"added\": true}', 1, '{}')",
    )
    .bind(org)
    .bind(c)
    .bind(version as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO orders (id, organization_id, customer_id, total, note) VALUES ($2, $1, $3, 1, 'v' || $4)",
    )
    .bind(org)
    .bind(o)
    .bind(c)
    .bind(version as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO order_lines (order_id, line_no, sku, qty) VALUES ($1, 1, 'added', 1)")
        .bind(o)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The harness's digest of one tenant's rows (all three member tables), read in one snapshot.
pub async fn digest(src: &PgPool, org: Uuid) -> sqlx::Result<String> {
    let mut tx = src.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let row: (String, i64, String, i64, String, i64) = sqlx::query_as(
        "SELECT \
           (SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM customers t WHERE organization_id = $1), \
           (SELECT count(*) FROM customers WHERE organization_id = $1), \
           (SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM orders t WHERE organization_id = $1), \
           (SELECT count(*) FROM orders WHERE organization_id = $1), \
           (SELECT coalesce(md5(string_agg(l::text, '|' ORDER BY l::text)), '') FROM order_lines l \
              JOIN orders o ON o.id = l.order_id WHERE o.organization_id = $1), \
           (SELECT count(*) FROM order_lines l JOIN orders o ON o.id = l.order_id WHERE o.organization_id = $1)",
    )
    .bind(org)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(format!(
        "c{}:{} o{}:{} l{}:{}",
        row.1, row.0, row.3, row.2, row.5, row.4
    ))
}

/// What the harness knows of one tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub org: Uuid,
    pub customers: i64,
    pub version: u64,
    /// The digest the harness last wrote (or that a finished promotion must have left).
    pub expected: String,
    /// Set while a promotion's outcome is unknown (it did not finish in time): either digest
    /// is then acceptable.
    pub alternative: Option<String>,
    /// Completed manual backups: (record id, digest of the rows it holds).
    pub backups: Vec<(Uuid, String)>,
    /// Completed STAGING restores that keep a schema (restore job ids).
    pub kept_stagings: Vec<Uuid>,
    /// The tenant's policy, if it has one (drills may name it).
    pub policy: Option<Uuid>,
}
