//! Reading the tenant schema from the PostgreSQL catalog: which tables a tier covers, their
//! columns, and an order in which foreign keys are satisfied.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgConnection;

use drfleet_artifact::{ColumnDef, TableHeader};

use crate::handler::JobError;

/// drfleet's own tables. They carry `organization_id` too and, with the default
/// DR_SOURCE_DATABASE_URL, live in the same database, so the `full` tier must skip them.
pub const METADATA_TABLES: [&str; 12] = [
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
    "_sqlx_migrations",
];

/// A table to export or restore.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub oid: u32,
    pub name: String,
    /// Copyable columns (generated columns are left out: PostgreSQL computes them).
    pub columns: Vec<ColumnDef>,
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

/// Tables of a tier, in foreign-key order (referenced tables first).
/// `tables` = None means every base table of `schema` that has `tenant_column`.
pub async fn resolve_tables(
    conn: &mut PgConnection,
    schema: &str,
    tenant_column: &str,
    tables: Option<&[String]>,
) -> Result<Vec<TableInfo>, JobError> {
    let found: Vec<(sqlx::postgres::types::Oid, String, bool)> = sqlx::query_as(
        "SELECT c.oid, c.relname::text, EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
             AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
         ORDER BY c.relname",
    )
    .bind(schema)
    .bind(tenant_column)
    .fetch_all(&mut *conn)
    .await?;
    let mut selected: Vec<(u32, String)> = Vec::new();
    match tables {
        None => selected.extend(
            found
                .iter()
                .filter(|t| t.2 && !METADATA_TABLES.contains(&t.1.as_str()))
                .map(|t| (t.0.0, t.1.clone())),
        ),
        Some(names) => {
            for name in names {
                let Some(t) = found.iter().find(|t| &t.1 == name) else {
                    return Err(JobError::permanent(
                        "TIER_TABLE_MISSING",
                        "a table named by the tier does not exist",
                    ));
                };
                if !t.2 {
                    return Err(JobError::permanent(
                        "TIER_TABLE_NOT_TENANT_SCOPED",
                        "a table named by the tier lacks the tenant column",
                    ));
                }
                selected.push((t.0.0, t.1.clone()));
            }
        }
    }
    if selected.is_empty() {
        return Err(JobError::permanent(
            "TIER_EMPTY",
            "the tier covers no table",
        ));
    }
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
    let order = fk_order(
        &selected,
        &edges.iter().map(|(a, b)| (a.0, b.0)).collect::<Vec<_>>(),
    );
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
        out.push(TableInfo { oid, name, columns });
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
