//! Tenant membership: which tables of the tenant schema hold a tenant's rows, and how a row is
//! found to be the tenant's. One place, used by the backup (what to export and how to select
//! it), the staging engine (how to check and promote it) and `drctl tiers show`.
//!
//! A table of DR_TENANT_SCHEMA is reached
//! - by its **tenant column** (DR_TENANT_COLUMN): `t.organization_id = $org`;
//! - as the **tenant root** (DR_TENANT_ROOT, `schema.table(column)`): the table whose key is
//!   the tenant id, `t.id = $org`;
//! - by a **path** of foreign keys, child to parent, ending at a table reached by the tenant
//!   column or the root: `invoice_lines(invoice_id) → invoices(id)`, `invoices.organization_id
//!   = $org`. A row belongs to the tenant when its parent along the path does (an `EXISTS`
//!   per hop, see [`predicate`]).
//!
//! Rules (docs/architecture.md "Tenant membership"):
//! - **Shortest path** (fewest keys); ties are broken by the name of the first constraint,
//!   then by the parent's own choice, so the choice is deterministic and stable as long as
//!   the keys are. A tier may pin a table's first key (`table via constraint`).
//! - **Nulls**: a row with a NULL in a key column of its path matches no parent, so it is not
//!   the tenant's — it is global (never exported, never deleted by a promotion), like a row
//!   whose foreign key is NULL is not checked by PostgreSQL (`MATCH SIMPLE`).
//! - **Cycles and self-references** are never hops of a path: only keys to a table with a
//!   shorter path are. A table whose keys lead to no member (for instance a cycle of
//!   tenant-less tables with no key out of it) belongs to no tenant: it is **global**, listed
//!   as such and never touched. A table on a cycle that also has a key out of it to a member
//!   gets a path like any other.
//! - Only keys between tables of DR_TENANT_SCHEMA count, and drfleet's own tables
//!   ([`METADATA_TABLES`]) are never members.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgConnection;
use sqlx::postgres::types::Oid;

pub use drfleet_artifact::{ReachHop as Hop, TableReach as Reach};

use super::catalog::{METADATA_TABLES, quote_ident};
use crate::handler::JobError;

/// DR_TENANT_ROOT: the table whose primary key is the tenant id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRoot {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl TenantRoot {
    /// `schema.table(column)`, each a plain lowercase identifier. The error never quotes the
    /// input.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        const SHAPE: &str = "must be schema.table(column), e.g. public.organizations(id)";
        let s = s.trim();
        let (qualified, rest) = s.split_once('(').ok_or(SHAPE)?;
        let column = rest.strip_suffix(')').ok_or(SHAPE)?;
        let (schema, table) = qualified.split_once('.').ok_or(SHAPE)?;
        let ident = |x: &str| {
            !x.is_empty()
                && x.len() <= 63
                && (x.as_bytes()[0].is_ascii_lowercase() || x.as_bytes()[0] == b'_')
                && x.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if [schema, table, column].iter().all(|x| ident(x)) {
            Ok(Self {
                schema: schema.into(),
                table: table.into(),
                column: column.into(),
            })
        } else {
            Err(SHAPE)
        }
    }
}

impl std::fmt::Display for TenantRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}({})", self.schema, self.table, self.column)
    }
}

/// Where membership is decided: the tenant schema's layout settings.
#[derive(Debug, Clone)]
pub struct Layout<'a> {
    pub schema: &'a str,
    pub tenant_column: &'a str,
    pub root: Option<&'a TenantRoot>,
}

/// A table of the tenant schema, for [`resolve`].
#[derive(Debug, Clone)]
pub struct CatTable {
    pub oid: u32,
    pub name: String,
    pub has_tenant_column: bool,
}

/// A foreign key between two tables of the tenant schema, for [`resolve`].
#[derive(Debug, Clone)]
pub struct CatKey {
    pub constraint: String,
    pub child: u32,
    pub child_cols: Vec<String>,
    pub parent: u32,
    pub parent_cols: Vec<String>,
}

/// Membership of every table: the reach of each member (by oid), and the global tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub members: BTreeMap<u32, Reach>,
    /// Tables of the schema that belong to no tenant (metadata tables left out).
    pub global: Vec<u32>,
}

/// Decide the reach of every table (see the module docs for the rules). `root` is the root
/// table's oid and key column, if configured and present.
pub fn resolve(
    tables: &[CatTable],
    keys: &[CatKey],
    tenant_column: &str,
    root: Option<(u32, &str)>,
) -> Resolved {
    resolve_pinned(tables, keys, tenant_column, root, &BTreeMap::new())
}

/// [`resolve`], with the first key of some tables' paths pinned by a tier (table oid →
/// constraint name): such a table is reached through that key only, whatever its length;
/// the tables reached through it follow. A pin whose key leads to no member leaves the
/// table global (the caller refuses that, see [`check_pins`]).
pub fn resolve_pinned(
    tables: &[CatTable],
    keys: &[CatKey],
    tenant_column: &str,
    root: Option<(u32, &str)>,
    pins: &BTreeMap<u32, String>,
) -> Resolved {
    let name: BTreeMap<u32, &str> = tables.iter().map(|t| (t.oid, t.name.as_str())).collect();
    let mut members: BTreeMap<u32, Reach> = BTreeMap::new();
    for t in tables {
        if METADATA_TABLES.contains(&t.name.as_str()) {
            continue;
        }
        if let Some((oid, col)) = root
            && oid == t.oid
        {
            members.insert(t.oid, Reach::Root { column: col.into() });
        } else if t.has_tenant_column {
            members.insert(
                t.oid,
                Reach::TenantColumn {
                    column: tenant_column.into(),
                },
            );
        }
    }
    // Level by level: a table first reachable at level n has a shortest path of n keys.
    let mut level: BTreeSet<u32> = members.keys().copied().collect();
    while !level.is_empty() {
        let mut next: BTreeMap<u32, &CatKey> = BTreeMap::new();
        for k in keys {
            let unassigned = !members.contains_key(&k.child)
                && name
                    .get(&k.child)
                    .is_some_and(|n| !METADATA_TABLES.contains(n));
            let pinned_elsewhere = pins.get(&k.child).is_some_and(|c| *c != k.constraint);
            if !unassigned || pinned_elsewhere || k.child == k.parent || !level.contains(&k.parent)
            {
                continue;
            }
            let best = next.entry(k.child).or_insert(k);
            if k.constraint < best.constraint {
                *best = k;
            }
        }
        for (child, k) in &next {
            let (mut hops, column) = match &members[&k.parent] {
                Reach::TenantColumn { column } | Reach::Root { column } => {
                    (Vec::new(), column.clone())
                }
                Reach::Path { hops, column } => (hops.clone(), column.clone()),
            };
            hops.insert(
                0,
                Hop {
                    constraint: k.constraint.clone(),
                    columns: k.child_cols.clone(),
                    parent: name[&k.parent].to_string(),
                    parent_columns: k.parent_cols.clone(),
                },
            );
            members.insert(*child, Reach::Path { hops, column });
        }
        level = next.keys().copied().collect();
    }
    let global = tables
        .iter()
        .filter(|t| !members.contains_key(&t.oid) && !METADATA_TABLES.contains(&t.name.as_str()))
        .map(|t| t.oid)
        .collect();
    Resolved { members, global }
}

/// Every pin took effect: the pinned table is reached by a path whose first key is the pinned
/// one (not a table with the tenant column, the root, or a key to no member).
pub fn check_pins(resolved: &Resolved, pins: &BTreeMap<u32, String>) -> Result<(), JobError> {
    for (oid, constraint) in pins {
        let ok = matches!(
            resolved.members.get(oid),
            Some(Reach::Path { hops, .. }) if hops.first().is_some_and(|h| h.constraint == *constraint)
        );
        if !ok {
            return Err(JobError::permanent(
                "TIER_PATH_INVALID",
                format!(
                    "the tier pins {constraint}, which is no foreign key from a table without the \
                     tenant column to a member table"
                ),
            ));
        }
    }
    Ok(())
}

/// A tier's entry: `table`, or `table via constraint` to pin the first key of the table's
/// path.
pub fn tier_entry(entry: &str) -> (&str, Option<&str>) {
    match entry.split_once(" via ") {
        Some((t, c)) => (t.trim(), Some(c.trim())),
        None => (entry.trim(), None),
    }
}

/// The SQL condition that selects the tenant's rows of a table aliased `alias`, for the
/// organization `org` (an SQL expression: `$1`, or a quoted literal). Parents along a path
/// are tables of `schema_q` (quoted), aliased `<alias>_1`, `<alias>_2`, ….
pub fn predicate(reach: &Reach, schema_q: &str, alias: &str, org: &str) -> String {
    match reach {
        Reach::TenantColumn { column } | Reach::Root { column } => {
            format!("{alias}.{} = {org}", quote_ident(column))
        }
        Reach::Path { hops, column } => {
            let mut inner = String::new();
            let mut close = String::new();
            let mut prev = alias.to_string();
            for (i, h) in hops.iter().enumerate() {
                let p = format!("{alias}_{}", i + 1);
                let on: Vec<String> = h
                    .columns
                    .iter()
                    .zip(&h.parent_columns)
                    .map(|(c, pc)| format!("{p}.{} = {prev}.{}", quote_ident(pc), quote_ident(c)))
                    .collect();
                inner.push_str(&format!(
                    "EXISTS (SELECT 1 FROM {schema_q}.{} {p} WHERE {} AND ",
                    quote_ident(&h.parent),
                    on.join(" AND ")
                ));
                close.push(')');
                prev = p;
            }
            format!("{inner}{prev}.{} = {org}{close}", quote_ident(column))
        }
    }
}

/// How a manifest table was reached: manifests written before membership by keys carry no
/// reach, and all their tables had the tenant column.
pub fn reach_of(t: &drfleet_artifact::TableManifest, tenant_column: &str) -> Reach {
    t.reach.clone().unwrap_or_else(|| Reach::TenantColumn {
        column: tenant_column.into(),
    })
}

/// The column every row of a table must hold the tenant id in, if there is one (a path
/// table's rows are scoped by their keys instead).
pub fn scope_column(reach: &Reach) -> Option<&str> {
    match reach {
        Reach::TenantColumn { column } | Reach::Root { column } => Some(column),
        Reach::Path { .. } => None,
    }
}

/// One line for people: `tenant column organization_id`, `root (id)`, or the path.
pub fn describe(table: &str, reach: &Reach) -> String {
    match reach {
        Reach::TenantColumn { column } => format!("tenant column {column}"),
        Reach::Root { column } => format!("tenant root ({column})"),
        Reach::Path { hops, column } => {
            let mut s = String::from("path ");
            let mut child = table;
            for h in hops {
                s.push_str(&format!(
                    "{child}({}) → {}({}); ",
                    h.columns.join(", "),
                    h.parent,
                    h.parent_columns.join(", ")
                ));
                child = &h.parent;
            }
            format!("{s}{child}.{column}")
        }
    }
}

/// A foreign key as read: name, child, its columns, parent, its columns.
type KeyRow = (String, Oid, Vec<String>, Oid, Vec<String>);

/// The tenant schema's tables and the keys among them, read from the catalog.
pub async fn read_catalog(
    conn: &mut PgConnection,
    layout: &Layout<'_>,
) -> Result<(Vec<CatTable>, Vec<CatKey>), sqlx::Error> {
    let found: Vec<(Oid, String, bool)> = sqlx::query_as(
        "SELECT c.oid, c.relname::text, EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
             AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
         ORDER BY c.relname",
    )
    .bind(layout.schema)
    .bind(layout.tenant_column)
    .fetch_all(&mut *conn)
    .await?;
    let keys: Vec<KeyRow> = sqlx::query_as(
        "SELECT con.conname::text, con.conrelid, \
           ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), \
           con.confrelid, \
           ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) \
         FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
         WHERE con.contype = 'f' AND con.conparentid = 0 AND n.nspname = $1 AND pn.nspname = $1 \
         ORDER BY con.conname",
    )
    .bind(layout.schema)
    .fetch_all(&mut *conn)
    .await?;
    Ok((
        found
            .into_iter()
            .map(|(oid, name, has_tenant_column)| CatTable {
                oid: oid.0,
                name,
                has_tenant_column,
            })
            .collect(),
        keys.into_iter()
            .map(|(constraint, c, child_cols, p, parent_cols)| CatKey {
                constraint,
                child: c.0,
                child_cols,
                parent: p.0,
                parent_cols,
            })
            .collect(),
    ))
}

/// The root table's oid in `tables`, checked against the catalog: it must exist in the tenant
/// schema and have its key column.
pub async fn find_root(
    conn: &mut PgConnection,
    layout: &Layout<'_>,
    tables: &[CatTable],
) -> Result<Option<u32>, JobError> {
    let Some(root) = layout.root else {
        return Ok(None);
    };
    let missing = || {
        JobError::permanent(
            "TENANT_ROOT_MISSING",
            format!("DR_TENANT_ROOT {root} names no table and column of the tenant schema"),
        )
    };
    if root.schema != layout.schema {
        return Err(missing());
    }
    let t = tables
        .iter()
        .find(|t| t.name == root.table)
        .ok_or_else(missing)?;
    let has: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
    )
    .bind(Oid(t.oid))
    .bind(&root.column)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| super::source_error(&e))?;
    if has { Ok(Some(t.oid)) } else { Err(missing()) }
}

/// Membership of the tenant schema as the catalog has it now.
/// `pins`: (table, constraint) pairs of a tier (see [`resolve_pinned`]).
pub async fn membership(
    conn: &mut PgConnection,
    layout: &Layout<'_>,
    pins: &[(&str, &str)],
) -> Result<(Vec<CatTable>, Resolved), JobError> {
    let (tables, keys) = read_catalog(conn, layout)
        .await
        .map_err(|e| super::source_error(&e))?;
    let root = find_root(conn, layout, &tables).await?;
    let col = layout.root.map(|r| r.column.as_str()).unwrap_or_default();
    let mut pinned = BTreeMap::new();
    for (table, constraint) in pins {
        let Some(t) = tables.iter().find(|t| t.name == *table) else {
            return Err(JobError::permanent(
                "TIER_TABLE_MISSING",
                "a table named by the tier does not exist",
            ));
        };
        pinned.insert(t.oid, constraint.to_string());
    }
    let resolved = resolve_pinned(
        &tables,
        &keys,
        layout.tenant_column,
        root.map(|o| (o, col)),
        &pinned,
    );
    check_pins(&resolved, &pinned)?;
    Ok((tables, resolved))
}

/// Whether the tenant has its row in the root table (in the caller's snapshot). `None`
/// without a root. `org`: the tenant key as an SQL literal of the key type
/// (`TenantKey::sql_literal`), compared like the export compares it.
pub async fn root_row_exists(
    conn: &mut PgConnection,
    layout: &Layout<'_>,
    org: &str,
) -> Result<Option<bool>, JobError> {
    let Some(root) = layout.root else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {}.{} WHERE {} = {org})",
        quote_ident(&root.schema),
        quote_ident(&root.table),
        quote_ident(&root.column),
    );
    let found: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| super::source_error(&e))?;
    Ok(Some(found))
}

#[cfg(test)]
mod tests;
