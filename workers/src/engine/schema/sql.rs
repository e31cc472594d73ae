//! The SQL of recreation, built from a [`SchemaDdl`]'s structure and a [`Placement`]: every
//! identifier quoted, every recorded name placed, recorded expression text used as it is.
//! Pure; [`super::recreate`] runs it.

use std::collections::BTreeMap;

use drfleet_artifact::ddl::{
    ColumnDdl, ConstraintDdl, ConstraintKind, DefaultDdl, IndexDdl, QualifiedName, SchemaDdl,
    SequenceDef, SequenceOptions, TableDdl, TypeDef, TypeKind, TypeRef,
};

use crate::engine::catalog::quote_ident;

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
