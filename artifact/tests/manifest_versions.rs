//! Manifest format versions: a stored format 1 manifest (no `schema`) still reads and passes
//! the format check; format 2 carries the tables' DDL and round-trips it.

use drfleet_artifact::ddl::{
    ColumnDdl, ConstraintDdl, ConstraintKind, DefaultDdl, IndexDdl, IndexKey, QualifiedName,
    SchemaDdl, TableDdl, TypeDef, TypeKind, TypeRef,
};
use drfleet_artifact::{MANIFEST_VERSION, MANIFEST_VERSIONS_READ, Manifest};

const V1: &[u8] = include_bytes!("fixtures/manifest-v1.json");

#[test]
fn a_stored_format_1_manifest_still_reads() {
    let m = Manifest::from_json(V1).unwrap();
    assert_eq!(m.format_version, 1);
    assert!(MANIFEST_VERSIONS_READ.contains(&m.format_version));
    assert!(m.schema.is_none());
    assert_eq!(m.tables.len(), 2);
    assert_eq!(m.tables[1].columns[2].data_type, "numeric(12,2)");
    // Written again, it stays format 1 (no `schema` key appears).
    let again = String::from_utf8(m.to_json()).unwrap();
    assert!(!again.contains("\"schema\""));
    assert_eq!(Manifest::from_json(again.as_bytes()).unwrap(), m);
}

#[test]
fn format_2_round_trips_the_schema() {
    let mut m = Manifest::from_json(V1).unwrap();
    m.format_version = MANIFEST_VERSION;
    let mood = QualifiedName {
        schema: "app".into(),
        name: "mood".into(),
    };
    m.schema = Some(SchemaDdl {
        search_path: vec!["app".into()],
        types: vec![TypeDef {
            name: mood.clone(),
            def: TypeKind::Enum {
                labels: vec!["sad".into(), "it's ok".into()],
            },
        }],
        sequences: vec![],
        tables: vec![TableDdl {
            name: QualifiedName {
                schema: "app".into(),
                name: "invoices".into(),
            },
            columns: vec![ColumnDdl {
                name: "m".into(),
                ty: TypeRef::Named {
                    name: mood,
                    typmod: String::new(),
                    array_dims: 1,
                },
                not_null: true,
                collation: None,
                default: Some(DefaultDdl::Expr {
                    sql: "'{sad}'::mood[]".into(),
                }),
                identity: None,
                generated: None,
            }],
            constraints: vec![ConstraintDdl {
                name: "invoices_pkey".into(),
                def: ConstraintKind::PrimaryKey {
                    columns: vec!["id".into()],
                },
                deferrable: false,
                initially_deferred: false,
            }],
            indexes: vec![IndexDdl {
                name: "by_lower".into(),
                unique: false,
                method: "btree".into(),
                keys: vec![IndexKey {
                    column: None,
                    expression: Some("lower(name)".into()),
                    collation: None,
                    opclass: None,
                    desc: true,
                    nulls_first: Some(false),
                }],
                include: vec![],
                predicate: Some("(amount > (0)::numeric)".into()),
                nulls_not_distinct: false,
            }],
        }],
    });
    let back = Manifest::from_json(&m.to_json()).unwrap();
    assert_eq!(back, m);
}
