//! Reading the tenant schema from the PostgreSQL catalog: which tables a tier covers, their
//! columns, and an order in which foreign keys are satisfied.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgConnection;

use drfleet_artifact::{ColumnDef, TableHeader};

use super::membership::{self, Layout, Reach};
use crate::handler::JobError;

/// drfleet's own tables. They carry `organization_id` too and, with the default
/// DR_SOURCE_DATABASE_URL, live in the same database, so the `full` tier must skip them.
pub const METADATA_TABLES: [&str; 19] = [
    "pf_backup_tiers",
    "pf_backup_policies",
    "pf_backup_records",
    "pf_restore_jobs",
    "pf_dr_drill_reports",
    "pf_audit_events",
    "pf_audit_heads",
    "pf_commands",
    "pf_rejected_messages",
    "pf_jobs",
    "pf_outbox",
    "pf_schedule_slots",
    "pf_alerts",
    // The scheduler's verify rotation.
    "pf_verify_rotation",
    // The key hierarchy: never in a tenant's backup (a backup must not carry its own key).
    "pf_tenant_keys",
    "pf_destroyed_tenant_keys",
    "pf_shred_requests",
    "pf_shreds",
    "_sqlx_migrations",
];

/// A table to export or restore.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub oid: u32,
    pub name: String,
    /// Copyable columns (generated columns are left out: PostgreSQL computes them).
    pub columns: Vec<ColumnDef>,
    /// How its rows are the tenant's.
    pub reach: Reach,
}

impl TableInfo {
    pub fn header(&self) -> TableHeader {
        TableHeader {
            name: self.name.clone(),
            columns: self.columns.clone(),
        }
    }
}

/// Session settings that fix how COPY renders values, so a table's text is the same in the
/// backup session and in the restore session that re-hashes what it loaded.
pub const PIN_RENDERING: &str = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, MDY'; \
     SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; \
     SET LOCAL synchronize_seqscans = off";

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Tables of a tier, in foreign-key order (referenced tables first; the tenant root, if any,
/// first of all), each with how its rows are the tenant's ([`membership`]).
/// `all_tables` means every member table of the tenant schema (the `full` tier); otherwise
/// `entries` name the tables, and a table reached by a path brings the tables of its path
/// along, since its rows are scoped by theirs. An entry `table via constraint` pins the first
/// key of the table's path (in an `all_tables` tier entries only pin).
pub async fn resolve_tables(
    conn: &mut PgConnection,
    layout: &Layout<'_>,
    all_tables: bool,
    entries: &[String],
) -> Result<Vec<TableInfo>, JobError> {
    let parsed: Vec<(&str, Option<&str>)> =
        entries.iter().map(|e| membership::tier_entry(e)).collect();
    let pins: Vec<(&str, &str)> = parsed
        .iter()
        .filter_map(|(t, c)| c.map(|c| (*t, c)))
        .collect();
    let (found, resolved) = membership::membership(conn, layout, &pins).await?;
    let oid_of = |name: &str| found.iter().find(|t| t.name == name).map(|t| t.oid);
    let mut selected: BTreeSet<u32> = BTreeSet::new();
    if all_tables {
        selected.extend(resolved.members.keys().copied());
    } else {
        for (name, _) in parsed {
            let Some(oid) = oid_of(name) else {
                return Err(JobError::permanent(
                    "TIER_TABLE_MISSING",
                    "a table named by the tier does not exist",
                ));
            };
            let Some(reach) = resolved.members.get(&oid) else {
                return Err(JobError::permanent(
                    "TIER_TABLE_NOT_TENANT_SCOPED",
                    "a table named by the tier lacks the tenant column and reaches no tenant table by foreign keys",
                ));
            };
            selected.insert(oid);
            if let Reach::Path { hops, .. } = reach {
                selected.extend(hops.iter().filter_map(|h| oid_of(&h.parent)));
            }
        }
    }
    if selected.is_empty() {
        return Err(JobError::permanent(
            "TIER_EMPTY",
            "the tier covers no table",
        ));
    }
    let selected: Vec<(u32, String)> = found
        .iter()
        .filter(|t| selected.contains(&t.oid))
        .map(|t| (t.oid, t.name.clone()))
        .collect();
    let oids: Vec<sqlx::postgres::types::Oid> = selected
        .iter()
        .map(|t| sqlx::postgres::types::Oid(t.0))
        .collect();
    let edges: Vec<(sqlx::postgres::types::Oid, sqlx::postgres::types::Oid)> = sqlx::query_as(
        "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f' \
         AND conrelid = ANY($1) AND confrelid = ANY($1) AND conrelid <> confrelid",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?;
    let mut order = fk_order(
        &selected,
        &edges.iter().map(|(a, b)| (a.0, b.0)).collect::<Vec<_>>(),
    );
    // The root first: every other table's rows hang off its row.
    if let Some(i) = order
        .iter()
        .position(|t| matches!(resolved.members.get(&t.0), Some(Reach::Root { .. })))
    {
        let root = order.remove(i);
        order.insert(0, root);
    }
    let mut out = Vec::with_capacity(order.len());
    for (oid, name) in order {
        let cols: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull \
             FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attgenerated = '' ORDER BY a.attnum",
        )
        .bind(sqlx::postgres::types::Oid(oid))
        .fetch_all(&mut *conn)
        .await?;
        let columns = cols
            .into_iter()
            .map(|(name, data_type, nullable)| ColumnDef {
                name,
                data_type,
                nullable,
            })
            .collect();
        let reach = resolved.members[&oid].clone();
        out.push(TableInfo {
            oid,
            name,
            columns,
            reach,
        });
    }
    Ok(out)
}

/// Topological order, referenced tables before referencing ones; ties and cycles by name.
/// `edges` are (referencing, referenced).
pub fn fk_order(tables: &[(u32, String)], edges: &[(u32, u32)]) -> Vec<(u32, String)> {
    let names: BTreeMap<u32, String> = tables.iter().cloned().collect();
    let mut deps: BTreeMap<u32, BTreeSet<u32>> =
        tables.iter().map(|t| (t.0, BTreeSet::new())).collect();
    for (from, to) in edges {
        if from != to && names.contains_key(from) && names.contains_key(to) {
            deps.get_mut(from).expect("known table").insert(*to);
        }
    }
    let mut done: Vec<(u32, String)> = Vec::new();
    let mut placed: BTreeSet<u32> = BTreeSet::new();
    while placed.len() < names.len() {
        // Ready tables, by name.
        let mut ready: Vec<(&String, u32)> = deps
            .iter()
            .filter(|(oid, d)| !placed.contains(*oid) && d.iter().all(|x| placed.contains(x)))
            .map(|(oid, _)| (&names[oid], *oid))
            .collect();
        if ready.is_empty() {
            // A cycle: take the first remaining table by name.
            ready = names
                .iter()
                .filter(|(o, _)| !placed.contains(*o))
                .map(|(o, n)| (n, *o))
                .collect();
            ready.sort();
            ready.truncate(1);
        } else {
            ready.sort();
        }
        for (name, oid) in ready {
            placed.insert(oid);
            done.push((oid, name.clone()));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    /// Every table the migrations create is a metadata table: a new one carrying
    /// `organization_id` must not become a member of the `full` tier.
    #[test]
    fn every_migrated_table_is_a_metadata_table() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for rest in sql.split("CREATE TABLE ").skip(1) {
                let rest = rest.trim_start_matches("IF NOT EXISTS ");
                let name = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap();
                assert!(
                    super::METADATA_TABLES.contains(&name),
                    "{name} is missing from METADATA_TABLES"
                );
                n += 1;
            }
        }
        assert!(n >= 13, "{n} tables found");
    }

    use super::*;

    fn t(v: &[(u32, &str)]) -> Vec<(u32, String)> {
        v.iter().map(|(o, n)| (*o, n.to_string())).collect()
    }

    #[test]
    fn referenced_tables_come_first() {
        // orders -> customers, order_items -> orders, order_items -> products
        let tables = t(&[
            (1, "order_items"),
            (2, "orders"),
            (3, "customers"),
            (4, "products"),
        ]);
        let order = fk_order(&tables, &[(2, 3), (1, 2), (1, 4)]);
        let names: Vec<_> = order.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(names, ["customers", "products", "orders", "order_items"]);
    }

    #[test]
    fn cycles_and_self_references_still_order_every_table() {
        let tables = t(&[(1, "a"), (2, "b"), (3, "c")]);
        let order = fk_order(&tables, &[(1, 2), (2, 1), (3, 3)]);
        let names: Vec<_> = order.iter().map(|x| x.1.as_str()).collect();
        // c only references itself, so it is ready first; the a/b cycle is broken by name.
        assert_eq!(names, ["c", "a", "b"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
