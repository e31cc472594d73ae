use proptest::prelude::*;

use super::*;

fn table(oid: u32, name: &str, tenant: bool) -> CatTable {
    CatTable {
        oid,
        name: name.into(),
        has_tenant_column: tenant,
    }
}

fn key(constraint: &str, child: u32, cols: &[&str], parent: u32, pcols: &[&str]) -> CatKey {
    CatKey {
        constraint: constraint.into(),
        child,
        child_cols: cols.iter().map(|c| c.to_string()).collect(),
        parent,
        parent_cols: pcols.iter().map(|c| c.to_string()).collect(),
    }
}

fn path_of(r: &Resolved, oid: u32) -> Vec<String> {
    match &r.members[&oid] {
        Reach::Path { hops, .. } => hops.iter().map(|h| h.constraint.clone()).collect(),
        other => panic!("{other:?}"),
    }
}

/// organizations (root) ← invoices (tenant column) ← invoice_lines ← line_notes; plans is
/// referenced but references nothing; a ⇄ b is a cycle with no way out; c → c only.
fn invoices() -> (Vec<CatTable>, Vec<CatKey>) {
    let tables = vec![
        table(1, "organizations", false),
        table(2, "invoices", true),
        table(3, "invoice_lines", false),
        table(4, "line_notes", false),
        table(5, "plans", false),
        table(6, "a", false),
        table(7, "b", false),
        table(8, "c", false),
        table(9, "org_settings", false),
        table(10, "pf_jobs", true),
    ];
    let keys = vec![
        key("invoices_org_fkey", 2, &["organization_id"], 1, &["id"]),
        key("invoices_plan_fkey", 2, &["plan"], 5, &["code"]),
        key("lines_invoice_fkey", 3, &["invoice_id"], 2, &["id"]),
        key("notes_line_fkey", 4, &["line_id"], 3, &["id"]),
        key("a_b", 6, &["b_id"], 7, &["id"]),
        key("b_a", 7, &["a_id"], 6, &["id"]),
        key("c_c", 8, &["parent"], 8, &["id"]),
        key("settings_org", 9, &["org"], 1, &["id"]),
    ];
    (tables, keys)
}

#[test]
fn children_and_grandchildren_are_reached_by_their_keys_and_the_rest_is_global() {
    let (tables, keys) = invoices();
    let r = resolve(&tables, &keys, "organization_id", Some((1, "id")));
    assert_eq!(
        r.members[&1],
        Reach::Root {
            column: "id".into()
        }
    );
    assert_eq!(
        r.members[&2],
        Reach::TenantColumn {
            column: "organization_id".into()
        }
    );
    assert_eq!(path_of(&r, 3), ["lines_invoice_fkey"]);
    assert_eq!(path_of(&r, 4), ["notes_line_fkey", "lines_invoice_fkey"]);
    let Reach::Path { hops, column } = &r.members[&4] else {
        unreachable!()
    };
    assert_eq!(column, "organization_id");
    assert_eq!(hops[0].parent, "invoice_lines");
    assert_eq!(hops[1].parent, "invoices");
    // Through the root: its key column is the tenant id.
    let Reach::Path { column, .. } = &r.members[&9] else {
        panic!("{:?}", r.members[&9])
    };
    assert_eq!(column, "id");
    // plans, the closed cycle and the self-reference belong to nobody; metadata is neither.
    assert_eq!(r.global, [5, 6, 7, 8]);
    assert!(!r.members.contains_key(&10));
}

#[test]
fn without_a_root_its_children_are_reached_through_the_tenant_tables_only() {
    let (tables, keys) = invoices();
    let r = resolve(&tables, &keys, "organization_id", None);
    assert!(!r.members.contains_key(&1));
    assert!(!r.members.contains_key(&9));
    assert_eq!(path_of(&r, 4).len(), 2);
}

#[test]
fn the_shortest_path_wins_and_ties_go_to_the_first_constraint_name() {
    // x has the tenant column; y → x directly ("zz") and through w ("aa" → "ab").
    let tables = vec![
        table(1, "x", true),
        table(2, "y", false),
        table(3, "w", false),
        table(4, "v", true),
    ];
    let keys = vec![
        key("zz", 2, &["x_id"], 1, &["id"]),
        key("aa", 2, &["w_id"], 3, &["id"]),
        key("ab", 3, &["x_id"], 1, &["id"]),
        // w also references v: same length as its key to x, later name.
        key("ac", 3, &["v_id"], 4, &["id"]),
    ];
    let r = resolve(&tables, &keys, "organization_id", None);
    assert_eq!(path_of(&r, 2), ["zz"]);
    assert_eq!(path_of(&r, 3), ["ab"]);
}

#[test]
fn a_cycle_with_a_way_out_is_reached_and_hops_never_revisit_a_table() {
    // a ⇄ b, and b → t (tenant column).
    let tables = vec![
        table(1, "a", false),
        table(2, "b", false),
        table(3, "t", true),
    ];
    let keys = vec![
        key("a_b", 1, &["b_id"], 2, &["id"]),
        key("b_a", 2, &["a_id"], 1, &["id"]),
        key("b_t", 2, &["t_id"], 3, &["id"]),
    ];
    let r = resolve(&tables, &keys, "organization_id", None);
    assert_eq!(path_of(&r, 2), ["b_t"]);
    assert_eq!(path_of(&r, 1), ["a_b", "b_t"]);
}

#[test]
fn predicates_nest_one_exists_per_hop_and_compare_every_key_column() {
    let reach = Reach::Path {
        hops: vec![
            Hop {
                constraint: "n".into(),
                columns: vec!["line_id".into()],
                parent: "invoice_lines".into(),
                parent_columns: vec!["id".into()],
            },
            Hop {
                constraint: "l".into(),
                columns: vec!["org_ref".into(), "invoice_id".into()],
                parent: "invoices".into(),
                parent_columns: vec!["organization_id".into(), "id".into()],
            },
        ],
        column: "organization_id".into(),
    };
    assert_eq!(
        predicate(&reach, "\"public\"", "t", "$1"),
        "EXISTS (SELECT 1 FROM \"public\".\"invoice_lines\" t_1 WHERE t_1.\"id\" = t.\"line_id\" AND \
         EXISTS (SELECT 1 FROM \"public\".\"invoices\" t_2 WHERE t_2.\"organization_id\" = t_1.\"org_ref\" \
         AND t_2.\"id\" = t_1.\"invoice_id\" AND t_2.\"organization_id\" = $1))"
    );
    assert_eq!(
        predicate(
            &Reach::Root {
                column: "id".into()
            },
            "s",
            "t",
            "'x'"
        ),
        "t.\"id\" = 'x'"
    );
    assert_eq!(
        describe("line_notes", &reach),
        "path line_notes(line_id) → invoice_lines(id); \
         invoice_lines(org_ref, invoice_id) → invoices(organization_id, id); invoices.organization_id"
    );
}

#[test]
fn tenant_root_settings_parse_strictly() {
    let r = TenantRoot::parse("public.organizations(id)").unwrap();
    assert_eq!(
        (r.schema.as_str(), r.table.as_str(), r.column.as_str()),
        ("public", "organizations", "id")
    );
    assert_eq!(r.to_string(), "public.organizations(id)");
    for bad in [
        "organizations(id)",
        "public.organizations",
        "public.organizations(id",
        "public.Orgs(id)",
        "public.orgs(id; drop)",
        "",
    ] {
        assert!(TenantRoot::parse(bad).is_err(), "{bad}");
    }
}

/// A random schema: `n` tables, some with the tenant column, random keys.
fn schema() -> impl Strategy<Value = (Vec<CatTable>, Vec<CatKey>)> {
    (2usize..12).prop_flat_map(|n| {
        (
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec((0..n, 0..n, 0u8..8), 0..(3 * n)),
        )
            .prop_map(move |(tenant, edges)| {
                let tables = (0..n)
                    .map(|i| table(i as u32 + 1, &format!("t{i}"), tenant[i] && i % 3 == 0))
                    .collect();
                let keys = edges
                    .iter()
                    .enumerate()
                    .map(|(i, (c, p, tag))| {
                        key(
                            &format!("k{tag}_{i}"),
                            *c as u32 + 1,
                            &["x"],
                            *p as u32 + 1,
                            &["id"],
                        )
                    })
                    .collect();
                (tables, keys)
            })
    })
}

fn len(r: &Resolved, oid: u32) -> Option<usize> {
    r.members.get(&oid).map(|m| match m {
        Reach::Path { hops, .. } => hops.len(),
        _ => 0,
    })
}

proptest! {
    #[test]
    fn paths_are_shortest_closed_and_independent_of_input_order(
        (tables, keys) in schema(),
        rot in 0usize..16,
    ) {
        let r = resolve(&tables, &keys, "organization_id", None);
        // Every table is a member or global, never both.
        for t in &tables {
            prop_assert!(r.members.contains_key(&t.oid) != r.global.contains(&t.oid));
        }
        for k in &keys {
            if k.child == k.parent {
                continue;
            }
            // A key to a member makes the child a member, at most one key further away.
            if let Some(p) = len(&r, k.parent) {
                let c = len(&r, k.child);
                prop_assert!(c.is_some(), "a key to a member makes a member");
                prop_assert!(c.unwrap() <= p + 1, "not the shortest path");
            }
        }
        let by_name: BTreeMap<&str, u32> = tables.iter().map(|t| (t.name.as_str(), t.oid)).collect();
        for (oid, m) in &r.members {
            if let Reach::Path { hops, .. } = m {
                // Each hop is a real key, to a member exactly one key closer to the tenant,
                // and a path never visits a table twice.
                let mut at = *oid;
                let mut seen = BTreeSet::from([at]);
                for (i, h) in hops.iter().enumerate() {
                    let parent = by_name[h.parent.as_str()];
                    prop_assert!(keys.iter().any(|k| k.constraint == h.constraint && k.child == at && k.parent == parent));
                    prop_assert_eq!(len(&r, parent), Some(hops.len() - i - 1));
                    prop_assert!(seen.insert(parent));
                    at = parent;
                }
                // No key of the table to a closer member has a smaller name.
                let first = &hops[0];
                for k in keys.iter().filter(|k| k.child == *oid && k.parent != *oid) {
                    if len(&r, k.parent) == Some(hops.len() - 1) {
                        prop_assert!(first.constraint <= k.constraint);
                    }
                }
            }
        }
        // The same schema listed in another order resolves the same.
        let mut t2 = tables.clone();
        let mut k2 = keys.clone();
        let (tn, kn) = (t2.len(), k2.len().max(1));
        t2.rotate_left(rot % tn);
        k2.rotate_left(rot % kn);
        k2.reverse();
        prop_assert_eq!(resolve(&t2, &k2, "organization_id", None).members, r.members);
    }
}

#[test]
fn a_tier_may_pin_a_longer_path_and_a_pin_that_leads_nowhere_is_refused() {
    // y → x directly ("zz") and through w ("aa" → "ab"); z hangs off y.
    let tables = vec![
        table(1, "x", true),
        table(2, "y", false),
        table(3, "w", false),
        table(4, "z", false),
        table(5, "g", false),
    ];
    let keys = vec![
        key("zz", 2, &["x_id"], 1, &["id"]),
        key("aa", 2, &["w_id"], 3, &["id"]),
        key("ab", 3, &["x_id"], 1, &["id"]),
        key("z_y", 4, &["y_id"], 2, &["id"]),
        key("y_g", 2, &["g_id"], 5, &["id"]),
    ];
    let pins = BTreeMap::from([(2, "aa".to_string())]);
    let r = resolve_pinned(&tables, &keys, "organization_id", None, &pins);
    assert_eq!(path_of(&r, 2), ["aa", "ab"]);
    assert_eq!(
        path_of(&r, 4),
        ["z_y", "aa", "ab"],
        "descendants follow the pin"
    );
    assert!(check_pins(&r, &pins).is_ok());
    // A key to a global table, a key that does not exist, a table with the tenant column.
    for pins in [
        BTreeMap::from([(2, "y_g".to_string())]),
        BTreeMap::from([(2, "nope".to_string())]),
        BTreeMap::from([(1, "zz".to_string())]),
    ] {
        let r = resolve_pinned(&tables, &keys, "organization_id", None, &pins);
        assert_eq!(
            check_pins(&r, &pins).unwrap_err().code,
            "TIER_PATH_INVALID",
            "{pins:?}"
        );
    }
    assert_eq!(tier_entry("y via aa"), ("y", Some("aa")));
    assert_eq!(tier_entry("y"), ("y", None));
}
