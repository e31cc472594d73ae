//! What recreates the backed-up tables on an empty database (manifest format 2): the types and
//! sequences they use, their columns, constraints and indexes, read from the catalog by the
//! backup inside its snapshot transaction.
//!
//! Everything is relocatable: names (schemas, types, tables, sequences, collations) are stored
//! apart from definitions, so a recreator can place each original schema in another one (all
//! in one scratch schema, say). Expressions that cannot be stored as structure (defaults other
//! than `nextval`, generated columns, check constraints, index expressions and predicates,
//! domain checks) are rendered by PostgreSQL with [`SchemaDdl::search_path`] as the search
//! path, so objects of those schemas appear unqualified; the recreator runs them with the
//! destinations of those schemas on the search path in the same order. See
//! `docs/artifact-format.md` §8.1 for the limits.

use serde::{Deserialize, Serialize};

/// `schema.name` of a catalog object, unquoted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

/// A column's (or an attribute's, or a domain's base) type.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TypeRef {
    /// A `pg_catalog` type: `format_type` output with only `pg_catalog` on the search path,
    /// typmod and array brackets included (`numeric(12,2)`, `text[]`). Never relocated.
    Builtin { sql: String },
    /// Any other type. Relocated when it is one of [`SchemaDdl::types`]; otherwise (an
    /// extension's type, say) referenced where it was.
    Named {
        #[serde(flatten)]
        name: QualifiedName,
        /// The type modifier as `format_type` renders it after the name (`(10)`), or empty.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        typmod: String,
        /// Array dimensions (`[]` per dimension); 0 for a plain value.
        #[serde(default, skip_serializing_if = "is_zero")]
        array_dims: u32,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A type the backed-up tables use, created before them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TypeDef {
    #[serde(flatten)]
    pub name: QualifiedName,
    pub def: TypeKind,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TypeKind {
    /// Labels in sort order.
    Enum {
        labels: Vec<String>,
    },
    Domain {
        base: TypeRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        collation: Option<QualifiedName>,
        not_null: bool,
        /// Default expression (rendered on [`SchemaDdl::search_path`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<String>,
        /// `pg_get_constraintdef` of each check, by constraint name.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        checks: Vec<NamedDefinition>,
    },
    Composite {
        attributes: Vec<Attribute>,
    },
}

/// A constraint name and its `pg_get_constraintdef` text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamedDefinition {
    pub name: String,
    pub definition: String,
}

/// An attribute of a composite type.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: TypeRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<QualifiedName>,
}

/// Sequence options (`pg_sequence`); the data type is a builtin integer type.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SequenceOptions {
    pub data_type: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
}

/// A free-standing sequence a backed-up table uses: owned by one of its columns (`serial`) or
/// named in a column default. Identity sequences are not listed: they belong to their column
/// ([`Identity`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SequenceDef {
    #[serde(flatten)]
    pub name: QualifiedName,
    pub options: SequenceOptions,
    /// `(table, column)` of a backed-up table owning it (`OWNED BY`), in the table's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<(String, String)>,
}

/// A column default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DefaultDdl {
    /// `nextval('<sequence>'::regclass)`: the sequence is relocated.
    Nextval { sequence: QualifiedName },
    /// Any other expression (rendered on [`SchemaDdl::search_path`]).
    Expr { sql: String },
}

/// `GENERATED { ALWAYS | BY DEFAULT } AS IDENTITY (…)`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub always: bool,
    pub options: SequenceOptions,
}

/// One column, generated ones included, in `attnum` order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ColumnDdl {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: TypeRef,
    pub not_null: bool,
    /// Only when it differs from the type's default collation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<QualifiedName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultDdl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// `GENERATED ALWAYS AS (<expr>) STORED`: the expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
}

/// A table constraint, added after the data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConstraintDdl {
    pub name: String,
    pub def: ConstraintKind,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferrable: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub initially_deferred: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConstraintKind {
    PrimaryKey {
        columns: Vec<String>,
    },
    Unique {
        columns: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nulls_not_distinct: bool,
    },
    /// `pg_get_constraintdef` (`CHECK (…)`, rendered on [`SchemaDdl::search_path`]).
    Check {
        definition: String,
    },
    /// To another backed-up table (keys to tables outside the backup are not recorded).
    ForeignKey {
        columns: Vec<String>,
        references: QualifiedName,
        ref_columns: Vec<String>,
        /// `pg_constraint.confupdtype` / `confdeltype`: `a` no action, `r` restrict,
        /// `c` cascade, `n` set null, `d` set default.
        on_update: char,
        on_delete: char,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        match_full: bool,
    },
}

/// An index that backs no constraint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexDdl {
    pub name: String,
    pub unique: bool,
    /// Access method (`btree`, `gin`, …).
    pub method: String,
    pub keys: Vec<IndexKey>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// `WHERE` of a partial index (rendered on [`SchemaDdl::search_path`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nulls_not_distinct: bool,
}

/// One key of an index: a column or an expression.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Rendered on [`SchemaDdl::search_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<QualifiedName>,
    /// Only when not the type's default operator class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opclass: Option<QualifiedName>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub desc: bool,
    /// Only when it differs from the direction's default (`NULLS LAST` ascending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nulls_first: Option<bool>,
}

/// One backed-up table's definition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableDdl {
    #[serde(flatten)]
    pub name: QualifiedName,
    pub columns: Vec<ColumnDdl>,
    /// Primary key, unique, check, then foreign keys; each group by name.
    #[serde(default)]
    pub constraints: Vec<ConstraintDdl>,
    #[serde(default)]
    pub indexes: Vec<IndexDdl>,
}

/// What recreates the backed-up tables (the manifest's `schema`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SchemaDdl {
    /// The schemas whose objects the rendered expressions name unqualified, in search order
    /// (the tables' schema first).
    pub search_path: Vec<String>,
    /// In dependency order (a domain after its base, a composite after its attributes' types).
    pub types: Vec<TypeDef>,
    pub sequences: Vec<SequenceDef>,
    /// In the manifest's table order (referenced tables first).
    pub tables: Vec<TableDdl>,
}

impl SchemaDdl {
    /// Every schema an object is recorded in, first seen first (the search path's first).
    pub fn schemas(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        };
        for s in &self.search_path {
            add(s);
        }
        for t in &self.types {
            add(&t.name.schema);
        }
        for s in &self.sequences {
            add(&s.name.schema);
        }
        for t in &self.tables {
            add(&t.name.schema);
        }
        out
    }

    /// The definition of the table named `name` (the manifest's unqualified table name).
    pub fn table(&self, name: &str) -> Option<&TableDdl> {
        self.tables.iter().find(|t| t.name.name == name)
    }

    /// Whether `name` is a type this schema creates (and so relocates).
    pub fn defines_type(&self, name: &QualifiedName) -> bool {
        self.types.iter().any(|t| &t.name == name)
    }
}
