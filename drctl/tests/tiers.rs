//! `drctl tiers show` against a real PostgreSQL (a database per test): every table of a tier
//! and how it is reached, then the global tables.

mod common;

use common::{TestDb, drctl};

fn run(db: &TestDb, args: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let out = drctl()
        .args(args)
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn summary(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["table"].as_str().unwrap(),
                l.get("how").and_then(|h| h.as_str()).unwrap_or("global")
            )
        })
        .collect()
}

#[tokio::test]
async fn tiers_show_lists_every_table_and_its_path() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE TABLE organizations (id uuid PRIMARY KEY);
         CREATE TABLE plans (code text PRIMARY KEY);
         CREATE TABLE invoices (id bigint PRIMARY KEY, organization_id uuid NOT NULL REFERENCES organizations(id),
                                plan text REFERENCES plans(code));
         CREATE TABLE invoice_lines (id bigint PRIMARY KEY, invoice_id bigint REFERENCES invoices(id));
         CREATE TABLE line_notes (id bigint PRIMARY KEY, line_id bigint REFERENCES invoice_lines(id));
         CREATE TABLE org_settings (org uuid PRIMARY KEY REFERENCES organizations(id));
         CREATE TABLE line_refs (id bigint PRIMARY KEY, line_id bigint REFERENCES invoice_lines(id),
                                 invoice_id bigint REFERENCES invoices(id));
         INSERT INTO pf_backup_tiers (id, organization_id, name, tables) VALUES
           (gen_random_uuid(), NULL, 'notes', '{line_notes}'),
           (gen_random_uuid(), NULL, 'pinned', '{line_refs via line_refs_line_id_fkey}'),
           (gen_random_uuid(), NULL, 'badpin', '{line_refs via invoices_plan_fkey}');",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let (code, lines, stderr) = run(
        &db,
        &["tiers", "show", "--tenant-root", "public.organizations(id)"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        summary(&lines),
        [
            "organizations tenant root (id)",
            "invoices tenant column organization_id",
            "org_settings path org_settings(org) → organizations(id); organizations.id",
            "invoice_lines path invoice_lines(invoice_id) → invoices(id); invoices.organization_id",
            "line_notes path line_notes(line_id) → invoice_lines(id); invoice_lines(invoice_id) → invoices(id); invoices.organization_id",
            "line_refs path line_refs(invoice_id) → invoices(id); invoices.organization_id",
            "plans global",
        ]
    );
    assert_eq!(lines[4]["reach"], "path");
    assert_eq!(lines[4]["hops"][0]["constraint"], "line_notes_line_id_fkey");

    // Without a root, the root table and what hangs off it alone are global.
    let (code, lines, _) = run(&db, &["tiers", "show"]);
    assert_eq!(code, Some(0));
    let s = summary(&lines);
    assert!(s.contains(&"organizations global".to_string()), "{s:?}");
    assert!(s.contains(&"org_settings global".to_string()), "{s:?}");

    // A named tier brings the tables of its tables' paths.
    let (code, lines, _) = run(&db, &["tiers", "show", "notes"]);
    assert_eq!(code, Some(0));
    let tables: Vec<&str> = lines
        .iter()
        .filter(|l| l["reach"] != "global")
        .map(|l| l["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["invoices", "invoice_lines", "line_notes"]);

    // A tier may pin a longer path; a pin that is no key to a member is refused.
    let (code, lines, stderr) = run(&db, &["tiers", "show", "pinned"]);
    assert_eq!(code, Some(0), "{stderr}");
    let pinned: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["table"] == "line_refs").collect();
    assert_eq!(
        pinned[0]["how"],
        "path line_refs(line_id) → invoice_lines(id); invoice_lines(invoice_id) → invoices(id); invoices.organization_id"
    );
    let (code, _, stderr) = run(&db, &["tiers", "show", "badpin"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("TIER_PATH_INVALID"), "{stderr}");

    let (code, lines, stderr) = run(&db, &["tiers", "show", "nope"]);
    assert_eq!((code, lines.len()), (Some(1), 0));
    assert!(stderr.contains("tier nope not found"), "{stderr}");

    // A bad DR_TENANT_ROOT: one line, exit 2.
    let (code, _, stderr) = run(&db, &["tiers", "show", "--tenant-root", "organizations"]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("DR_TENANT_ROOT"), "{stderr}");
}
