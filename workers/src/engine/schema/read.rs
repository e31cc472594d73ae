//! Reading [`SchemaDdl`] from the catalog, inside the backup's snapshot transaction.
//!
//! Structure comes from the catalog tables (types, sequences, keys, index columns); what has
//! no structure (default, generated, check, index expressions and predicates, domain checks)
//! is rendered by `pg_get_expr` / `pg_get_constraintdef` / `pg_get_indexdef` with the recorded
//! schemas as the search path, so objects of those schemas come out unqualified and follow a
//! relocation (see [`drfleet_artifact::ddl`]).

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;
use sqlx::PgConnection;
use sqlx::postgres::types::Oid;

use drfleet_artifact::ddl::{
    Attribute, ColumnDdl, ConstraintDdl, ConstraintKind, DefaultDdl, Identity, IndexDdl, IndexKey,
    NamedDefinition, QualifiedName, SchemaDdl, SequenceDef, SequenceOptions, TableDdl, TypeDef,
    TypeKind, TypeRef,
};

use crate::engine::catalog::quote_ident;
use crate::engine::source_error;
use crate::handler::JobError;

fn src<T>(r: Result<T, sqlx::Error>) -> Result<T, JobError> {
    r.map_err(|e| source_error(&e))
}

/// Schemas of the user types (recursively: array elements, domain bases, composite
/// attributes) and sequences the tables use; extension members and the catalog left out.
const SCHEMAS_SQL: &str = "WITH RECURSIVE ty(oid) AS ( \
       SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
     UNION \
       SELECT s.x FROM ty JOIN pg_type t ON t.oid = ty.oid CROSS JOIN LATERAL ( \
         SELECT t.typelem AS x UNION ALL SELECT t.typbasetype UNION ALL \
         SELECT a.atttypid FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid AND c.relkind = 'c' \
         WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) s WHERE s.x <> 0 ) \
     SELECT n.nspname::text FROM ty JOIN pg_type t ON t.oid = ty.oid JOIN pg_namespace n ON n.oid = t.typnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT EXISTS ( \
       SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e') \
     UNION \
     SELECT n.nspname::text FROM pg_attrdef d \
       JOIN pg_depend dp ON dp.classid = 'pg_attrdef'::regclass AND dp.objid = d.oid AND dp.refclassid = 'pg_class'::regclass \
       JOIN pg_class s ON s.oid = dp.refobjid AND s.relkind = 'S' JOIN pg_namespace n ON n.oid = s.relnamespace \
     WHERE d.adrelid = ANY($1)";

#[derive(sqlx::FromRow)]
struct ColumnRow {
    name: String,
    /// `format_type` of the column (used as is for a catalog type).
    rendered: String,
    typid: Oid,
    typmod: i32,
    not_null: bool,
    identity: String,
    generated: String,
    coll_schema: Option<String>,
    coll_name: Option<String>,
    default_expr: Option<String>,
    seq_oid: Option<Oid>,
    seq_schema: Option<String>,
    seq_name: Option<String>,
    is_nextval: Option<bool>,
}

const COLUMNS_SQL: &str = "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS rendered, a.atttypid AS typid, a.atttypmod AS typmod, \
       a.attnotnull AS not_null, a.attidentity::text AS identity, a.attgenerated::text AS generated, \
       cn.nspname::text AS coll_schema, co.collname::text AS coll_name, \
       pg_get_expr(d.adbin, d.adrelid) AS default_expr, \
       seq.oid AS seq_oid, sn.nspname::text AS seq_schema, seq.relname::text AS seq_name, \
       (pg_get_expr(d.adbin, d.adrelid) = format('nextval(%L::regclass)', seq.oid::regclass::text)) AS is_nextval \
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> t.typcollation \
     LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace \
     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
     LEFT JOIN LATERAL (SELECT s.oid, s.relname, s.relnamespace FROM pg_depend dp JOIN pg_class s ON s.oid = dp.refobjid AND s.relkind = 'S' \
        WHERE dp.classid = 'pg_attrdef'::regclass AND dp.objid = d.oid AND dp.refclassid = 'pg_class'::regclass LIMIT 1) seq ON true \
     LEFT JOIN pg_namespace sn ON sn.oid = seq.relnamespace \
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

#[derive(sqlx::FromRow)]
struct ConstraintRow {
    name: String,
    kind: String,
    deferrable: bool,
    deferred: bool,
    columns: Vec<String>,
    ref_oid: Oid,
    ref_schema: String,
    ref_table: String,
    ref_columns: Vec<String>,
    on_update: String,
    on_delete: String,
    match_type: String,
    definition: String,
    nulls_not_distinct: bool,
}

const CONSTRAINTS_SQL: &str = "SELECT con.conname::text AS name, con.contype::text AS kind, \
       con.condeferrable AS deferrable, con.condeferred AS deferred, \
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o) AS columns, \
       con.confrelid AS ref_oid, COALESCE(rn.nspname::text, '') AS ref_schema, COALESCE(rc.relname::text, '') AS ref_table, \
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) AS ref_columns, \
       con.confupdtype::text AS on_update, con.confdeltype::text AS on_delete, con.confmatchtype::text AS match_type, \
       pg_get_constraintdef(con.oid) AS definition, \
       COALESCE((SELECT (to_jsonb(i) ->> 'indnullsnotdistinct')::bool FROM pg_index i WHERE i.indexrelid = con.conindid), false) AS nulls_not_distinct \
     FROM pg_constraint con LEFT JOIN pg_class rc ON rc.oid = con.confrelid LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
     WHERE con.conrelid = $1 AND con.contype IN ('p', 'u', 'c', 'f') \
     ORDER BY CASE con.contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'c' THEN 2 ELSE 3 END, con.conname";

#[derive(sqlx::FromRow)]
struct IndexRow {
    oid: Oid,
    name: String,
    unique: bool,
    method: String,
    key_count: i32,
    predicate: Option<String>,
    nulls_not_distinct: bool,
}

const INDEXES_SQL: &str = "SELECT i.indexrelid AS oid, ic.relname::text AS name, i.indisunique AS unique, am.amname::text AS method, \
       i.indnkeyatts::int4 AS key_count, pg_get_expr(i.indpred, i.indrelid) AS predicate, \
       COALESCE((to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false) AS nulls_not_distinct \
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam \
     WHERE i.indrelid = $1 AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid \
       AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')) \
     ORDER BY ic.relname";

#[derive(sqlx::FromRow)]
struct IndexKeyRow {
    position: i32,
    column: Option<String>,
    definition: String,
    desc: bool,
    nulls_first: bool,
    opclass_default: bool,
    opclass_schema: Option<String>,
    opclass_name: Option<String>,
    coll_schema: Option<String>,
    coll_name: Option<String>,
}

/// Keys of an index in order (`indkey` and the 0-based `int2vector`/`oidvector` options).
const INDEX_KEYS_SQL: &str = "SELECT k.o::int4 AS position, a.attname::text AS column, \
       pg_get_indexdef(i.indexrelid, k.o::int4, false) AS definition, \
       (i.indoption[k.o - 1] & 1) <> 0 AS desc, (i.indoption[k.o - 1] & 2) <> 0 AS nulls_first, \
       COALESCE(opc.opcdefault, true) AS opclass_default, opn.nspname::text AS opclass_schema, opc.opcname::text AS opclass_name, \
       cn.nspname::text AS coll_schema, co.collname::text AS coll_name \
     FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, o) \
     LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum <> 0 \
     LEFT JOIN pg_opclass opc ON opc.oid = i.indclass[k.o - 1] AND k.o <= i.indnkeyatts \
     LEFT JOIN pg_namespace opn ON opn.oid = opc.opcnamespace \
     LEFT JOIN pg_collation co ON co.oid = i.indcollation[k.o - 1] AND k.o <= i.indnkeyatts \
       AND i.indcollation[k.o - 1] <> 0 AND i.indcollation[k.o - 1] <> 100 \
       AND i.indcollation[k.o - 1] IS DISTINCT FROM a.attcollation \
     LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace \
     WHERE i.indexrelid = $1 ORDER BY k.o";

#[derive(sqlx::FromRow, Clone)]
struct TypeRow {
    schema: String,
    name: String,
    typtype: String,
    category: String,
    elem: Oid,
    base: Oid,
    base_typmod: i32,
    not_null: bool,
    relid: Oid,
    relkind: String,
    collation: Oid,
    extension: bool,
    default_expr: Option<String>,
}

const TYPE_SQL: &str = "SELECT n.nspname::text AS schema, t.typname::text AS name, t.typtype::text AS typtype, \
       t.typcategory::text AS category, t.typelem AS elem, t.typbasetype AS base, t.typtypmod AS base_typmod, \
       t.typnotnull AS not_null, t.typrelid AS relid, COALESCE((SELECT c.relkind::text FROM pg_class c WHERE c.oid = t.typrelid), '') AS relkind, \
       t.typcollation AS collation, \
       EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e') AS extension, \
       pg_get_expr(t.typdefaultbin, 0) AS default_expr \
     FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1";

const SEQUENCE_SQL: &str = "SELECT format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle \
     FROM pg_sequence s WHERE s.seqrelid = $1";

/// Collects the types to record, dependencies first.
struct Reader<'c> {
    conn: &'c mut PgConnection,
    types: Vec<TypeDef>,
    seen: BTreeSet<u32>,
    cache: BTreeMap<u32, TypeRow>,
}

impl Reader<'_> {
    async fn type_row(&mut self, oid: Oid) -> Result<TypeRow, JobError> {
        if let Some(r) = self.cache.get(&oid.0) {
            return Ok(r.clone());
        }
        let r: TypeRow = src(sqlx::query_as(TYPE_SQL)
            .bind(oid)
            .fetch_one(&mut *self.conn)
            .await)?;
        self.cache.insert(oid.0, r.clone());
        Ok(r)
    }

    /// The reference to a type (`typid` with `typmod`), recording the user types it needs.
    /// `rendered`: its `format_type`, when the caller read it already.
    fn type_ref(
        &mut self,
        typid: Oid,
        typmod: i32,
        rendered: Option<String>,
    ) -> BoxFuture<'_, Result<TypeRef, JobError>> {
        Box::pin(async move {
            let t = self.type_row(typid).await?;
            let (elem, dims) = if t.category == "A" && t.elem.0 != 0 {
                (t.elem, 1)
            } else {
                (typid, 0)
            };
            let e = self.type_row(elem).await?;
            if e.schema == "pg_catalog" {
                if let Some(sql) = rendered {
                    return Ok(TypeRef::Builtin { sql });
                }
                let sql: String = src(sqlx::query_scalar("SELECT format_type($1, $2)")
                    .bind(typid)
                    .bind(typmod)
                    .fetch_one(&mut *self.conn)
                    .await)?;
                return Ok(TypeRef::Builtin { sql });
            }
            let typmod = if typmod >= 0 {
                let (full, bare): (String, String) = src(sqlx::query_as(
                    "SELECT format_type($1, $2), format_type($1, NULL)",
                )
                .bind(elem)
                .bind(typmod)
                .fetch_one(&mut *self.conn)
                .await)?;
                full.strip_prefix(&bare).unwrap_or_default().to_string()
            } else {
                String::new()
            };
            self.record(elem, &e).await?;
            Ok(TypeRef::Named {
                name: QualifiedName {
                    schema: e.schema,
                    name: e.name,
                },
                typmod,
                array_dims: dims,
            })
        })
    }

    /// Record an enum, domain or composite type (after what it depends on). Extension
    /// members, catalog types and table row types are referenced, never recorded.
    async fn record(&mut self, oid: Oid, t: &TypeRow) -> Result<(), JobError> {
        let recordable = !t.extension
            && t.schema != "information_schema"
            && (t.typtype == "e" || t.typtype == "d" || (t.typtype == "c" && t.relkind == "c"));
        if !recordable || !self.seen.insert(oid.0) {
            return Ok(());
        }
        let def = match t.typtype.as_str() {
            "e" => TypeKind::Enum {
                labels: src(sqlx::query_scalar(
                    "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder",
                )
                .bind(oid)
                .fetch_all(&mut *self.conn)
                .await)?,
            },
            "d" => {
                let base = self.type_ref(t.base, t.base_typmod, None).await?;
                let base_row = self.type_row(t.base).await?;
                let collation = if t.collation.0 != 0 && t.collation != base_row.collation {
                    self.collation(t.collation).await?
                } else {
                    None
                };
                let checks: Vec<(String, String)> = src(sqlx::query_as(
                    "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
                     WHERE contypid = $1 AND contype = 'c' ORDER BY conname",
                )
                .bind(oid)
                .fetch_all(&mut *self.conn)
                .await)?;
                TypeKind::Domain {
                    base,
                    collation,
                    not_null: t.not_null,
                    default: t.default_expr.clone(),
                    checks: checks
                        .into_iter()
                        .map(|(name, definition)| NamedDefinition { name, definition })
                        .collect(),
                }
            }
            _ => {
                let attrs: Vec<(String, Oid, i32, Oid, Oid)> = src(sqlx::query_as(
                    "SELECT a.attname::text, a.atttypid, a.atttypmod, a.attcollation, t.typcollation \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                )
                .bind(t.relid)
                .fetch_all(&mut *self.conn)
                .await)?;
                let mut attributes = Vec::with_capacity(attrs.len());
                for (name, typid, typmod, coll, type_coll) in attrs {
                    let ty = self.type_ref(typid, typmod, None).await?;
                    let collation = if coll.0 != 0 && coll != type_coll {
                        self.collation(coll).await?
                    } else {
                        None
                    };
                    attributes.push(Attribute {
                        name,
                        ty,
                        collation,
                    });
                }
                TypeKind::Composite { attributes }
            }
        };
        self.types.push(TypeDef {
            name: QualifiedName {
                schema: t.schema.clone(),
                name: t.name.clone(),
            },
            def,
        });
        Ok(())
    }

    async fn collation(&mut self, oid: Oid) -> Result<Option<QualifiedName>, JobError> {
        let row: Option<(String, String)> = src(sqlx::query_as(
            "SELECT n.nspname::text, c.collname::text FROM pg_collation c \
             JOIN pg_namespace n ON n.oid = c.collnamespace WHERE c.oid = $1",
        )
        .bind(oid)
        .fetch_optional(&mut *self.conn)
        .await)?;
        Ok(row.map(|(schema, name)| QualifiedName { schema, name }))
    }

    async fn sequence_options(&mut self, seq: Oid) -> Result<SequenceOptions, JobError> {
        let (data_type, start, increment, min, max, cache, cycle): (
            String,
            i64,
            i64,
            i64,
            i64,
            i64,
            bool,
        ) = src(sqlx::query_as(SEQUENCE_SQL)
            .bind(seq)
            .fetch_one(&mut *self.conn)
            .await)?;
        Ok(SequenceOptions {
            data_type,
            start,
            increment,
            min,
            max,
            cache,
            cycle,
        })
    }
}

/// The definition of `tables` (`(oid, name)` in the manifest's order, all in `schema`), read
/// in the caller's transaction. Sets the search path for the reading and puts it back.
pub async fn read_schema(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[(u32, String)],
) -> Result<SchemaDdl, JobError> {
    let oids: Vec<Oid> = tables.iter().map(|t| Oid(t.0)).collect();
    let mut others: Vec<String> = src(sqlx::query_scalar(SCHEMAS_SQL)
        .bind(&oids)
        .fetch_all(&mut *conn)
        .await)?;
    others.retain(|s| s != schema);
    others.sort();
    others.dedup();
    let mut search_path = vec![schema.to_string()];
    search_path.extend(others);
    let path: Vec<String> = search_path.iter().map(|s| quote_ident(s)).collect();
    let saved: String = src(sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut *conn)
        .await)?;
    src(sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(path.join(", "))
        .execute(&mut *conn)
        .await)?;
    let mut reader = Reader {
        conn: &mut *conn,
        types: Vec::new(),
        seen: BTreeSet::new(),
        cache: BTreeMap::new(),
    };
    let (tables, sequences) = read_tables(&mut reader, schema, tables, &oids).await?;
    let types = std::mem::take(&mut reader.types);
    // The export that follows renders values (regclass, say) as the session had them.
    src(sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(saved)
        .execute(&mut *conn)
        .await)?;
    Ok(SchemaDdl {
        search_path,
        types,
        sequences,
        tables,
    })
}

async fn read_tables(
    r: &mut Reader<'_>,
    schema: &str,
    tables: &[(u32, String)],
    oids: &[Oid],
) -> Result<(Vec<TableDdl>, Vec<SequenceDef>), JobError> {
    let mut sequences: Vec<SequenceDef> = Vec::new();
    let mut seq_seen = BTreeSet::new();
    let mut out = Vec::with_capacity(tables.len());
    for (oid, name) in tables {
        let oid = Oid(*oid);
        let rows: Vec<ColumnRow> = src(sqlx::query_as(COLUMNS_SQL)
            .bind(oid)
            .fetch_all(&mut *r.conn)
            .await)?;
        let mut columns = Vec::with_capacity(rows.len());
        for c in rows {
            let ty = r.type_ref(c.typid, c.typmod, Some(c.rendered)).await?;
            let collation = match (c.coll_schema, c.coll_name) {
                (Some(schema), Some(name)) => Some(QualifiedName { schema, name }),
                _ => None,
            };
            let (mut default, mut identity, mut generated) = (None, None, None);
            if c.generated == "s" {
                generated = c.default_expr;
            } else if c.identity == "a" || c.identity == "d" {
                let seq: Oid = src(sqlx::query_scalar(
                    "SELECT pg_get_serial_sequence(format('%I.%I', $1::text, $2::text), $3)::regclass::oid",
                )
                .bind(schema)
                .bind(name)
                .bind(&c.name)
                .fetch_one(&mut *r.conn)
                .await)?;
                identity = Some(Identity {
                    always: c.identity == "a",
                    options: r.sequence_options(seq).await?,
                });
            } else if let Some(expr) = c.default_expr {
                match (c.is_nextval, c.seq_oid, c.seq_schema, c.seq_name) {
                    (Some(true), Some(seq), Some(seq_schema), Some(seq_name)) => {
                        let sequence = QualifiedName {
                            schema: seq_schema,
                            name: seq_name,
                        };
                        if seq_seen.insert(seq.0) {
                            let owned_by: Option<(String, String)> = src(sqlx::query_as(
                                "SELECT c.relname::text, a.attname::text FROM pg_depend d                                  JOIN pg_class c ON c.oid = d.refobjid                                  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid                                  WHERE d.classid = 'pg_class'::regclass AND d.objid = $1                                    AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a' AND d.refobjid = ANY($2)",
                            )
                            .bind(seq)
                            .bind(oids)
                            .fetch_optional(&mut *r.conn)
                            .await)?;
                            sequences.push(SequenceDef {
                                name: sequence.clone(),
                                options: r.sequence_options(seq).await?,
                                owned_by,
                            });
                        }
                        default = Some(DefaultDdl::Nextval { sequence });
                    }
                    _ => default = Some(DefaultDdl::Expr { sql: expr }),
                }
            }
            columns.push(ColumnDdl {
                name: c.name,
                ty,
                not_null: c.not_null,
                collation,
                default,
                identity,
                generated,
            });
        }
        let rows: Vec<ConstraintRow> = src(sqlx::query_as(CONSTRAINTS_SQL)
            .bind(oid)
            .fetch_all(&mut *r.conn)
            .await)?;
        let mut constraints = Vec::new();
        for c in rows {
            let def = match c.kind.as_str() {
                "p" => ConstraintKind::PrimaryKey { columns: c.columns },
                "u" => ConstraintKind::Unique {
                    columns: c.columns,
                    nulls_not_distinct: c.nulls_not_distinct,
                },
                "c" => ConstraintKind::Check {
                    definition: c.definition,
                },
                // Keys to tables outside the backup are not recreated.
                _ if !oids.contains(&c.ref_oid) => continue,
                _ => ConstraintKind::ForeignKey {
                    columns: c.columns,
                    references: QualifiedName {
                        schema: c.ref_schema,
                        name: c.ref_table,
                    },
                    ref_columns: c.ref_columns,
                    on_update: c.on_update.chars().next().unwrap_or('a'),
                    on_delete: c.on_delete.chars().next().unwrap_or('a'),
                    match_full: c.match_type == "f",
                },
            };
            constraints.push(ConstraintDdl {
                name: c.name,
                def,
                deferrable: c.deferrable,
                initially_deferred: c.deferred,
            });
        }
        let rows: Vec<IndexRow> = src(sqlx::query_as(INDEXES_SQL)
            .bind(oid)
            .fetch_all(&mut *r.conn)
            .await)?;
        let mut indexes = Vec::with_capacity(rows.len());
        for i in rows {
            let keys: Vec<IndexKeyRow> = src(sqlx::query_as(INDEX_KEYS_SQL)
                .bind(i.oid)
                .fetch_all(&mut *r.conn)
                .await)?;
            let (mut key_list, mut include) = (Vec::new(), Vec::new());
            for k in keys {
                if k.position > i.key_count {
                    include.extend(k.column);
                    continue;
                }
                let opclass = match (k.opclass_default, k.opclass_schema, k.opclass_name) {
                    (false, Some(schema), Some(name)) => Some(QualifiedName { schema, name }),
                    _ => None,
                };
                let collation = match (k.coll_schema, k.coll_name) {
                    (Some(schema), Some(name)) => Some(QualifiedName { schema, name }),
                    _ => None,
                };
                key_list.push(IndexKey {
                    expression: k.column.is_none().then_some(k.definition),
                    column: k.column,
                    collation,
                    opclass,
                    desc: k.desc,
                    nulls_first: (k.nulls_first != k.desc).then_some(k.nulls_first),
                });
            }
            indexes.push(IndexDdl {
                name: i.name,
                unique: i.unique,
                method: i.method,
                keys: key_list,
                include,
                predicate: i.predicate,
                nulls_not_distinct: i.nulls_not_distinct,
            });
        }
        out.push(TableDdl {
            name: QualifiedName {
                schema: schema.to_string(),
                name: name.clone(),
            },
            columns,
            constraints,
            indexes,
        });
    }
    Ok((out, sequences))
}
