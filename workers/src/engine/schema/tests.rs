use proptest::prelude::*;

use drfleet_artifact::ddl::{
    ColumnDdl, ConstraintDdl, ConstraintKind, DefaultDdl, Identity, IndexDdl, IndexKey,
    QualifiedName, SchemaDdl, SequenceOptions, TableDdl, TypeDef, TypeKind, TypeRef,
};

use super::sql::*;

fn qn(schema: &str, name: &str) -> QualifiedName {
    QualifiedName {
        schema: schema.into(),
        name: name.into(),
    }
}

fn builtin(sql: &str) -> TypeRef {
    TypeRef::Builtin { sql: sql.into() }
}

fn col(name: &str, ty: TypeRef) -> ColumnDdl {
    ColumnDdl {
        name: name.into(),
        ty,
        not_null: false,
        collation: None,
        default: None,
        identity: None,
        generated: None,
    }
}

fn options() -> SequenceOptions {
    SequenceOptions {
        data_type: "bigint".into(),
        start: 50,
        increment: 5,
        min: 1,
        max: i64::MAX,
        cache: 1,
        cycle: false,
    }
}

fn schema() -> SchemaDdl {
    let mut id = col("id", builtin("bigint"));
    id.not_null = true;
    id.identity = Some(Identity {
        always: true,
        options: options(),
    });
    let mut mood = col(
        "mood",
        TypeRef::Named {
            name: qn("app", "mood"),
            typmod: String::new(),
            array_dims: 1,
        },
    );
    mood.default = Some(DefaultDdl::Expr {
        sql: "'{sad}'::mood[]".into(),
    });
    let mut n = col("n", builtin("integer"));
    n.default = Some(DefaultDdl::Nextval {
        sequence: qn("app", "n_seq"),
    });
    let ext = col(
        "email",
        TypeRef::Named {
            name: qn("public", "citext"),
            typmod: String::new(),
            array_dims: 0,
        },
    );
    let mut slug = col("slug", builtin("text"));
    slug.generated = Some("lower(email)".into());
    slug.collation = Some(qn("pg_catalog", "C"));
    SchemaDdl {
        search_path: vec!["app".into()],
        types: vec![TypeDef {
            name: qn("app", "mood"),
            def: TypeKind::Enum {
                labels: vec!["sad".into(), "it's \"ok\"".into()],
            },
        }],
        sequences: vec![],
        tables: vec![TableDdl {
            name: qn("app", "we\"ird"),
            columns: vec![id, mood, n, ext, slug],
            constraints: vec![
                ConstraintDdl {
                    name: "fk".into(),
                    def: ConstraintKind::ForeignKey {
                        columns: vec!["a".into(), "b".into()],
                        references: qn("app", "parent"),
                        ref_columns: vec!["x".into(), "y".into()],
                        on_update: 'a',
                        on_delete: 'c',
                        match_full: true,
                    },
                    deferrable: true,
                    initially_deferred: true,
                },
                ConstraintDdl {
                    name: "u".into(),
                    def: ConstraintKind::Unique {
                        columns: vec!["n".into()],
                        nulls_not_distinct: true,
                    },
                    deferrable: false,
                    initially_deferred: false,
                },
            ],
            indexes: vec![IndexDdl {
                name: "by lower".into(),
                unique: true,
                method: "btree".into(),
                keys: vec![
                    IndexKey {
                        column: None,
                        expression: Some("lower(email)".into()),
                        collation: None,
                        opclass: Some(qn("pg_catalog", "text_pattern_ops")),
                        desc: true,
                        nulls_first: Some(false),
                    },
                    IndexKey {
                        column: Some("n".into()),
                        expression: None,
                        collation: None,
                        opclass: None,
                        desc: false,
                        nulls_first: None,
                    },
                ],
                include: vec!["id".into()],
                predicate: Some("(n > 0)".into()),
                nulls_not_distinct: false,
            }],
        }],
    }
}

#[test]
fn a_table_is_placed_quoted_and_its_sequences_and_types_follow_it() {
    let ddl = schema();
    let p = Placement::into_one("dr_drill_1");
    let t = &ddl.tables[0];
    assert_eq!(
        create_table_sql(&ddl, &p, t, true),
        "CREATE UNLOGGED TABLE \"dr_drill_1\".\"we\"\"ird\" (\
         \"id\" bigint GENERATED ALWAYS AS IDENTITY (INCREMENT BY 5 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 50 CACHE 1 NO CYCLE) NOT NULL, \
         \"mood\" \"dr_drill_1\".\"mood\"[] DEFAULT '{sad}'::mood[], \
         \"n\" integer DEFAULT nextval('\"dr_drill_1\".\"n_seq\"'::regclass), \
         \"email\" \"public\".\"citext\", \
         \"slug\" text COLLATE \"pg_catalog\".\"C\" GENERATED ALWAYS AS (lower(email)) STORED)"
    );
    // The original placement keeps every schema.
    assert!(
        create_table_sql(&ddl, &Placement::original(), t, false).starts_with(
            "CREATE TABLE \"app\".\"we\"\"ird\" (\"id\" bigint GENERATED ALWAYS AS IDENTITY"
        )
    );
    assert_eq!(
        create_type_sql(&ddl, &p, &ddl.types[0]),
        "CREATE TYPE \"dr_drill_1\".\"mood\" AS ENUM ('sad', 'it''s \"ok\"')"
    );
    assert_eq!(p.search_path(&ddl), "\"dr_drill_1\"");
    assert_eq!(
        Placement::original().with("app", "x y").search_path(&ddl),
        "\"x y\""
    );
}

#[test]
fn constraints_and_indexes_are_built_from_their_structure() {
    let ddl = schema();
    let p = Placement::into_one("s");
    let t = &ddl.tables[0];
    assert_eq!(
        constraint_sql(&p, t, &t.constraints[0]),
        "ALTER TABLE \"s\".\"we\"\"ird\" ADD CONSTRAINT \"fk\" FOREIGN KEY (\"a\", \"b\") REFERENCES \"s\".\"parent\" (\"x\", \"y\") \
         MATCH FULL ON UPDATE NO ACTION ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED"
    );
    assert_eq!(
        constraint_sql(&p, t, &t.constraints[1]),
        "ALTER TABLE \"s\".\"we\"\"ird\" ADD CONSTRAINT \"u\" UNIQUE NULLS NOT DISTINCT (\"n\")"
    );
    assert_eq!(
        index_sql(&p, t, &t.indexes[0]),
        "CREATE UNIQUE INDEX \"by lower\" ON \"s\".\"we\"\"ird\" USING \"btree\" \
         ((lower(email)) \"pg_catalog\".\"text_pattern_ops\" DESC NULLS LAST, \"n\") INCLUDE (\"id\") WHERE (n > 0)"
    );
    let setvals = setval_sql(&ddl, &p, t);
    assert_eq!(
        setvals.len(),
        2,
        "identity and nextval columns: {setvals:?}"
    );
    assert!(setvals[0].contains("pg_get_serial_sequence('\"s\".\"we\"\"ird\"', 'id')"));
    assert!(setvals[1].contains("'\"s\".\"n_seq\"'::regclass"));
}

proptest! {
    /// Whatever the names, every placed identifier is one quoted token: no name escapes its
    /// quotes, and the destination replaces the original schema.
    #[test]
    fn placed_names_are_always_quoted(schema in "[a-z\"' .;]{1,12}", name in "[a-z\"' .;]{1,12}", dest in "[a-z_\"]{1,12}") {
        let p = Placement::into_one(&dest);
        let q = p.qualify(&qn(&schema, &name));
        let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        prop_assert_eq!(q, format!("{}.{}", quoted(&dest), quoted(&name)));
        let kept = Placement::original().qualify(&qn(&schema, &name));
        prop_assert_eq!(kept, format!("{}.{}", quoted(&schema), quoted(&name)));
    }
}
