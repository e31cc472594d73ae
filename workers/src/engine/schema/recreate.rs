//! Recreating recorded tables from a manifest's [`SchemaDdl`], placed by a [`Placement`], in
//! pg_restore's order: phase 1 (before the data) schemas, types, sequences, tables with their
//! columns, defaults, identity and generated columns and NOT NULL; phase 2 (after the data)
//! primary keys, unique and check constraints, foreign keys, indexes, and the sequences
//! advanced past the rows loaded.
//!
//! The SQL is built from the recorded structure with every identifier quoted; the expressions
//! recorded as text run with the destinations of [`SchemaDdl::search_path`] as the search
//! path. A failure is `SCHEMA_RECREATE_FAILED` naming the object and the SQLSTATE, never SQL
//! text or a value; a lost connection keeps its transient source code.

use std::collections::BTreeMap;
use std::time::Instant;

use sqlx::{Connection, PgConnection};

use drfleet_artifact::ddl::{
    ColumnDdl, ConstraintDdl, ConstraintKind, DefaultDdl, IndexDdl, QualifiedName, SchemaDdl,
    SequenceDef, SequenceOptions, TableDdl, TypeDef, TypeKind, TypeRef,
};

use crate::engine::catalog::quote_ident;
use crate::engine::source_error;
use crate::handler::JobError;

/// Where each original schema goes. Unmapped schemas go to [`Placement::default`] if set,
/// else stay where they were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    map: BTreeMap<String, String>,
    default: Option<String>,
}

impl Placement {
    /// Every object in its original schema (a restore into an empty database).
    pub fn original() -> Self {
        Self::default()
    }

    /// Every recorded object in `dest` (a drill's scratch schema).
    pub fn into_one(dest: &str) -> Self {
        Self {
            map: BTreeMap::new(),
            default: Some(dest.to_string()),
        }
    }

    /// Objects of `from` go to `to`.
    pub fn with(mut self, from: &str, to: &str) -> Self {
        self.map.insert(from.to_string(), to.to_string());
        self
    }

    /// The destination of `schema`.
    pub fn dest<'a>(&'a self, schema: &'a str) -> &'a str {
        self.map
            .get(schema)
            .or(self.default.as_ref())
            .map(String::as_str)
            .unwrap_or(schema)
    }

    /// `"dest"."name"`.
    pub fn qualify(&self, n: &QualifiedName) -> String {
        format!(
            "{}.{}",
            quote_ident(self.dest(&n.schema)),
            quote_ident(&n.name)
        )
    }

    /// The destinations of `ddl`'s recorded schemas, deduplicated, first seen first.
    pub fn schemas(&self, ddl: &SchemaDdl) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in ddl.schemas() {
            let d = self.dest(&s).to_string();
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// The search path the recorded expressions were rendered for, placed.
    pub fn search_path(&self, ddl: &SchemaDdl) -> String {
        let mut out: Vec<String> = Vec::new();
        for s in &ddl.search_path {
            let d = quote_ident(self.dest(s));
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out.join(", ")
    }
}

/// `'text'` with quotes doubled (standard_conforming_strings is on since PostgreSQL 9.1).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An absolute (never relocated) name: collations, operator classes, unrecorded types.
fn absolute(n: &QualifiedName) -> String {
    format!("{}.{}", quote_ident(&n.schema), quote_ident(&n.name))
}

/// SQL of a type reference.
pub fn type_sql(ddl: &SchemaDdl, p: &Placement, t: &TypeRef) -> String {
    match t {
        TypeRef::Builtin { sql } => sql.clone(),
        TypeRef::Named {
            name,
            typmod,
            array_dims,
        } => {
            let base = if ddl.defines_type(name) {
                p.qualify(name)
            } else {
                absolute(name)
            };
            format!("{base}{typmod}{}", "[]".repeat(*array_dims as usize))
        }
    }
}

fn collate(c: &Option<QualifiedName>) -> String {
    c.as_ref()
        .map(|c| format!(" COLLATE {}", absolute(c)))
        .unwrap_or_default()
}

fn sequence_options(o: &SequenceOptions) -> String {
    format!(
        "AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}",
        o.data_type,
        o.increment,
        o.min,
        o.max,
        o.start,
        o.cache,
        if o.cycle { "CYCLE" } else { "NO CYCLE" }
    )
}

/// `CREATE TYPE` / `CREATE DOMAIN`.
pub fn create_type_sql(ddl: &SchemaDdl, p: &Placement, t: &TypeDef) -> String {
    let name = p.qualify(&t.name);
    match &t.def {
        TypeKind::Enum { labels } => {
            let labels: Vec<String> = labels.iter().map(|l| literal(l)).collect();
            format!("CREATE TYPE {name} AS ENUM ({})", labels.join(", "))
        }
        TypeKind::Domain {
            base,
            collation,
            not_null,
            default,
            checks,
        } => {
            let mut sql = format!(
                "CREATE DOMAIN {name} AS {}{}",
                type_sql(ddl, p, base),
                collate(collation)
            );
            if let Some(d) = default {
                sql.push_str(&format!(" DEFAULT {d}"));
            }
            if *not_null {
                sql.push_str(" NOT NULL");
            }
            for c in checks {
                sql.push_str(&format!(
                    " CONSTRAINT {} {}",
                    quote_ident(&c.name),
                    c.definition
                ));
            }
            sql
        }
        TypeKind::Composite { attributes } => {
            let attrs: Vec<String> = attributes
                .iter()
                .map(|a| {
                    format!(
                        "{} {}{}",
                        quote_ident(&a.name),
                        type_sql(ddl, p, &a.ty),
                        collate(&a.collation)
                    )
                })
                .collect();
            format!("CREATE TYPE {name} AS ({})", attrs.join(", "))
        }
    }
}

pub fn create_sequence_sql(p: &Placement, s: &SequenceDef) -> String {
    format!(
        "CREATE SEQUENCE {} {}",
        p.qualify(&s.name),
        sequence_options(&s.options)
    )
}

fn column_sql(ddl: &SchemaDdl, p: &Placement, c: &ColumnDdl) -> String {
    let mut sql = format!(
        "{} {}{}",
        quote_ident(&c.name),
        type_sql(ddl, p, &c.ty),
        collate(&c.collation)
    );
    if let Some(g) = &c.generated {
        sql.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
    } else if let Some(id) = &c.identity {
        sql.push_str(&format!(
            " GENERATED {} AS IDENTITY ({})",
            if id.always { "ALWAYS" } else { "BY DEFAULT" },
            // `AS type` is not an identity option: the column's type decides.
            sequence_options(&id.options)
                .split_once(' ')
                .and_then(|(_, rest)| rest.split_once(' '))
                .map(|(_, rest)| rest)
                .unwrap_or_default()
        ));
    } else {
        match &c.default {
            Some(DefaultDdl::Nextval { sequence }) => sql.push_str(&format!(
                " DEFAULT nextval({}::regclass)",
                literal(&p.qualify(sequence))
            )),
            Some(DefaultDdl::Expr { sql: e }) => sql.push_str(&format!(" DEFAULT {e}")),
            None => {}
        }
    }
    if c.not_null {
        sql.push_str(" NOT NULL");
    }
    sql
}

/// `CREATE [UNLOGGED] TABLE` with the columns, defaults, identity, generated columns and
/// NOT NULL; constraints and indexes come in phase 2.
pub fn create_table_sql(ddl: &SchemaDdl, p: &Placement, t: &TableDdl, unlogged: bool) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| column_sql(ddl, p, c)).collect();
    format!(
        "CREATE {}TABLE {} ({})",
        if unlogged { "UNLOGGED " } else { "" },
        p.qualify(&t.name),
        cols.join(", ")
    )
}

fn action(c: char) -> &'static str {
    match c {
        'r' => "RESTRICT",
        'c' => "CASCADE",
        'n' => "SET NULL",
        'd' => "SET DEFAULT",
        _ => "NO ACTION",
    }
}

fn idents(cols: &[String]) -> String {
    cols.iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ALTER TABLE … ADD CONSTRAINT …`.
pub fn constraint_sql(p: &Placement, t: &TableDdl, c: &ConstraintDdl) -> String {
    let body = match &c.def {
        ConstraintKind::PrimaryKey { columns } => format!("PRIMARY KEY ({})", idents(columns)),
        ConstraintKind::Unique {
            columns,
            nulls_not_distinct,
        } => format!(
            "UNIQUE{} ({})",
            if *nulls_not_distinct {
                " NULLS NOT DISTINCT"
            } else {
                ""
            },
            idents(columns)
        ),
        ConstraintKind::Check { definition } => definition.clone(),
        ConstraintKind::ForeignKey {
            columns,
            references,
            ref_columns,
            on_update,
            on_delete,
            match_full,
        } => format!(
            "FOREIGN KEY ({}) REFERENCES {} ({}){} ON UPDATE {} ON DELETE {}",
            idents(columns),
            p.qualify(references),
            idents(ref_columns),
            if *match_full { " MATCH FULL" } else { "" },
            action(*on_update),
            action(*on_delete)
        ),
    };
    let mut sql = format!(
        "ALTER TABLE {} ADD CONSTRAINT {} {body}",
        p.qualify(&t.name),
        quote_ident(&c.name)
    );
    // A check's definition carries its own NOT VALID; the rest are deferrable or not.
    if c.deferrable {
        sql.push_str(" DEFERRABLE");
        if c.initially_deferred {
            sql.push_str(" INITIALLY DEFERRED");
        }
    }
    sql
}

/// `CREATE [UNIQUE] INDEX … ON … USING …`.
pub fn index_sql(p: &Placement, t: &TableDdl, i: &IndexDdl) -> String {
    let keys: Vec<String> = i
        .keys
        .iter()
        .map(|k| {
            let mut s = match (&k.column, &k.expression) {
                (Some(c), _) => quote_ident(c),
                (None, Some(e)) => format!("({e})"),
                (None, None) => String::new(),
            };
            s.push_str(&collate(&k.collation));
            if let Some(o) = &k.opclass {
                s.push_str(&format!(" {}", absolute(o)));
            }
            if k.desc {
                s.push_str(" DESC");
            }
            match k.nulls_first {
                Some(true) => s.push_str(" NULLS FIRST"),
                Some(false) => s.push_str(" NULLS LAST"),
                None => {}
            }
            s
        })
        .collect();
    let mut sql = format!(
        "CREATE {}INDEX {} ON {} USING {} ({})",
        if i.unique { "UNIQUE " } else { "" },
        quote_ident(&i.name),
        p.qualify(&t.name),
        quote_ident(&i.method),
        keys.join(", ")
    );
    if !i.include.is_empty() {
        sql.push_str(&format!(" INCLUDE ({})", idents(&i.include)));
    }
    if i.nulls_not_distinct {
        sql.push_str(" NULLS NOT DISTINCT");
    }
    if let Some(w) = &i.predicate {
        sql.push_str(&format!(" WHERE {w}"));
    }
    sql
}

/// Statements advancing each sequence a table's column draws from past the rows loaded:
/// identity columns and `nextval` defaults on integer columns.
pub fn setval_sql(ddl: &SchemaDdl, p: &Placement, t: &TableDdl) -> Vec<String> {
    let table = p.qualify(&t.name);
    t.columns
        .iter()
        .filter(|c| matches!(&c.ty, TypeRef::Builtin { sql } if ["smallint", "integer", "bigint"].contains(&sql.as_str())))
        .filter_map(|c| {
            let seq = if c.identity.is_some() {
                format!(
                    "pg_get_serial_sequence({}, {})",
                    literal(&table),
                    literal(&c.name)
                )
            } else if let Some(DefaultDdl::Nextval { sequence }) = &c.default {
                format!("{}::regclass", literal(&p.qualify(sequence)))
            } else {
                return None;
            };
            let _ = ddl;
            Some(format!(
                "SELECT setval({seq}, m) FROM (SELECT max({}) AS m FROM {table}) x WHERE m IS NOT NULL",
                quote_ident(&c.name)
            ))
        })
        .collect()
}

/// What a statement creates, for errors: kind and placed name, never SQL.
struct Object<'a> {
    kind: &'static str,
    name: String,
    /// The constraint or index, for phase 2.
    part: Option<&'a str>,
}

fn recreate_error(e: sqlx::Error, what: &Object<'_>) -> JobError {
    let j = source_error(&e);
    if j.transient {
        return j;
    }
    let state = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| format!(" (SQLSTATE {c})"))
        .unwrap_or_default();
    let part = what.part.map(|p| format!(": {p}")).unwrap_or_default();
    JobError::permanent(
        "SCHEMA_RECREATE_FAILED",
        format!("recreating {} {}{part} failed{state}", what.kind, what.name),
    )
}

/// Run `statements` in one transaction with the placed search path.
async fn run(
    conn: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
    statements: Vec<(Object<'_>, String)>,
) -> Result<(), JobError> {
    let first = Object {
        kind: "schema",
        name: p.schemas(ddl).join(", "),
        part: None,
    };
    let mut tx = conn.begin().await.map_err(|e| recreate_error(e, &first))?;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(p.search_path(ddl))
        .execute(&mut *tx)
        .await
        .map_err(|e| recreate_error(e, &first))?;
    for (what, sql) in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| recreate_error(e, &what))?;
    }
    tx.commit().await.map_err(|e| recreate_error(e, &first))
}

/// Phase 1a: the destination schemas (if missing), types and sequences. Returns its ms.
pub async fn create_types(
    conn: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
) -> Result<u64, JobError> {
    let started = Instant::now();
    let mut statements = Vec::new();
    for s in p.schemas(ddl) {
        statements.push((
            Object {
                kind: "schema",
                name: s.clone(),
                part: None,
            },
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&s)),
        ));
    }
    for t in &ddl.types {
        statements.push((
            Object {
                kind: "type",
                name: format!("{}.{}", p.dest(&t.name.schema), t.name.name),
                part: None,
            },
            create_type_sql(ddl, p, t),
        ));
    }
    for s in &ddl.sequences {
        statements.push((
            Object {
                kind: "sequence",
                name: format!("{}.{}", p.dest(&s.name.schema), s.name.name),
                part: None,
            },
            create_sequence_sql(p, s),
        ));
    }
    run(conn, ddl, p, statements).await?;
    Ok(started.elapsed().as_millis() as u64)
}

fn table_object(p: &Placement, t: &TableDdl) -> Object<'static> {
    Object {
        kind: "table",
        name: format!("{}.{}", p.dest(&t.name.schema), t.name.name),
        part: None,
    }
}

/// Phase 1b: the tables (for a load that creates them itself, see
/// [`create_table_in`]). Returns its ms.
pub async fn create_tables(
    conn: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
    unlogged: bool,
) -> Result<u64, JobError> {
    let started = Instant::now();
    let statements = ddl
        .tables
        .iter()
        .map(|t| (table_object(p, t), create_table_sql(ddl, p, t, unlogged)))
        .collect();
    run(conn, ddl, p, statements).await?;
    Ok(started.elapsed().as_millis() as u64)
}

/// One table created inside the caller's transaction (the staging load creates and loads a
/// table in one transaction, so COPY may freeze its rows). Sets the search path locally.
pub async fn create_table_in(
    tx: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
    t: &TableDdl,
    unlogged: bool,
) -> Result<(), JobError> {
    let what = table_object(p, t);
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(p.search_path(ddl))
        .execute(&mut *tx)
        .await
        .map_err(|e| recreate_error(e, &what))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(create_table_sql(ddl, p, t, unlogged)))
        .execute(&mut *tx)
        .await
        .map_err(|e| recreate_error(e, &what))?;
    Ok(())
}

/// How long phase 2 took.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ConstraintTimings {
    /// Primary, unique, check and foreign keys (validated against the rows loaded).
    pub constraints_ms: u64,
    /// Indexes that back no constraint.
    pub indexes_ms: u64,
    /// Sequences advanced past the rows and attached to their owning columns.
    pub sequences_ms: u64,
}

/// Phase 2, after the data: primary keys, unique and check constraints, foreign keys (in
/// that order over all tables, so every key finds its referenced key), indexes, then the
/// sequences advanced and attached to their owning columns. One transaction.
pub async fn create_constraints(
    conn: &mut PgConnection,
    ddl: &SchemaDdl,
    p: &Placement,
) -> Result<ConstraintTimings, JobError> {
    let first = Object {
        kind: "schema",
        name: p.schemas(ddl).join(", "),
        part: None,
    };
    let mut tx = conn.begin().await.map_err(|e| recreate_error(e, &first))?;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(p.search_path(ddl))
        .execute(&mut *tx)
        .await
        .map_err(|e| recreate_error(e, &first))?;
    let rank = |c: &ConstraintDdl| match c.def {
        ConstraintKind::PrimaryKey { .. } => 0,
        ConstraintKind::Unique { .. } => 1,
        ConstraintKind::Check { .. } => 2,
        ConstraintKind::ForeignKey { .. } => 3,
    };
    let mut timings = ConstraintTimings::default();
    let started = Instant::now();
    for r in 0..4 {
        for t in &ddl.tables {
            for c in t.constraints.iter().filter(|c| rank(c) == r) {
                let what = Object {
                    part: Some(&c.name),
                    ..table_object(p, t)
                };
                sqlx::raw_sql(sqlx::AssertSqlSafe(constraint_sql(p, t, c)))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| recreate_error(e, &what))?;
            }
        }
    }
    timings.constraints_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    for t in &ddl.tables {
        for i in &t.indexes {
            let what = Object {
                part: Some(&i.name),
                ..table_object(p, t)
            };
            sqlx::raw_sql(sqlx::AssertSqlSafe(index_sql(p, t, i)))
                .execute(&mut *tx)
                .await
                .map_err(|e| recreate_error(e, &what))?;
        }
    }
    timings.indexes_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    for t in &ddl.tables {
        for sql in setval_sql(ddl, p, t) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| recreate_error(e, &table_object(p, t)))?;
        }
    }
    for s in &ddl.sequences {
        let Some((table, column)) = &s.owned_by else {
            continue;
        };
        let Some(t) = ddl.table(table) else { continue };
        let what = Object {
            kind: "sequence",
            name: format!("{}.{}", p.dest(&s.name.schema), s.name.name),
            part: None,
        };
        let sql = format!(
            "ALTER SEQUENCE {} OWNED BY {}.{}",
            p.qualify(&s.name),
            p.qualify(&t.name),
            quote_ident(column)
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| recreate_error(e, &what))?;
    }
    timings.sequences_ms = started.elapsed().as_millis() as u64;
    tx.commit().await.map_err(|e| recreate_error(e, &first))?;
    Ok(timings)
}
