//! Tenant membership by foreign keys and the tenant root (issue #19, items 1 and 2): tables
//! without the tenant column are backed up, staged and promoted with their parents, the
//! tenant's own root row comes back even after the tenant was deleted whole, and global
//! tables and other tenants stay byte-identical.

mod common;

use common::restore::*;
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

const ROOT: &str = "public.organizations(id)";

/// Every table a tenant has rows in.
const MEMBERS: [&str; 7] = [
    "organizations",
    "invoices",
    "invoice_lines",
    "line_notes",
    "projects",
    "project_files",
    "org_settings",
];

/// organizations (root; `ext.badges`, outside the tenant schema, references its slug) ← invoices (tenant column) ← invoice_lines ← line_notes (nullable
/// key); projects has a composite key with the tenant column, project_files references it
/// by a composite key without having the tenant column; org_settings references the root
/// only; plans and countries are global, tag_a ⇄ tag_b is a cycle leading nowhere (global).
async fn seed(env: &TestEnv, orgs: &[(&OrganizationId, i64)]) {
    sqlx::raw_sql(
        r#"
        CREATE TABLE organizations (id uuid PRIMARY KEY, name text NOT NULL, slug text NOT NULL UNIQUE);
        CREATE SCHEMA ext;
        CREATE TABLE ext.badges (
            id serial PRIMARY KEY,
            org_slug text NOT NULL REFERENCES public.organizations(slug) ON UPDATE CASCADE
        );
        CREATE TABLE plans (code text PRIMARY KEY, price int NOT NULL);
        CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
        CREATE TABLE invoices (
            id bigint PRIMARY KEY,
            organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            plan text REFERENCES plans(code),
            total numeric NOT NULL
        );
        CREATE TABLE invoice_lines (
            id bigint PRIMARY KEY,
            invoice_id bigint NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
            amount numeric NOT NULL,
            label text
        );
        CREATE TABLE line_notes (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            line_id bigint REFERENCES invoice_lines(id) ON DELETE CASCADE,
            body text NOT NULL
        );
        CREATE TABLE projects (
            organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            id int NOT NULL,
            name text NOT NULL,
            PRIMARY KEY (organization_id, id)
        );
        CREATE TABLE project_files (
            id bigserial PRIMARY KEY,
            project_org uuid NOT NULL,
            project_id int NOT NULL,
            path text NOT NULL,
            FOREIGN KEY (project_org, project_id) REFERENCES projects(organization_id, id) ON DELETE CASCADE
        );
        CREATE TABLE org_settings (
            org uuid PRIMARY KEY REFERENCES organizations(id) ON DELETE CASCADE,
            theme text NOT NULL
        );
        CREATE TABLE tag_a (id int PRIMARY KEY, b_id int);
        CREATE TABLE tag_b (id int PRIMARY KEY, a_id int REFERENCES tag_a(id));
        ALTER TABLE tag_a ADD FOREIGN KEY (b_id) REFERENCES tag_b(id);
        INSERT INTO plans VALUES ('basic', 10), ('gold', 50);
        INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan');
        INSERT INTO tag_a VALUES (1, NULL);
        INSERT INTO tag_b VALUES (1, 1);
        INSERT INTO line_notes (line_id, body) VALUES (NULL, 'a note of nobody');
        "#,
    )
    .execute(&env.pool)
    .await
    .unwrap();
    for (org, b) in orgs {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO organizations VALUES ('{org}', 'org {b}', 'org-{b}');
             INSERT INTO ext.badges (org_slug) VALUES ('org-{b}');
             INSERT INTO invoices SELECT {b} + g, '{org}', CASE WHEN g % 2 = 0 THEN 'gold' END, g * 1.5 FROM generate_series(1, 30) g;
             INSERT INTO invoice_lines SELECT {b} * 10 + g, {b} + 1 + g % 30, g, 'line ' || g FROM generate_series(1, 200) g;
             INSERT INTO line_notes (line_id, body) SELECT {b} * 10 + g, 'note ' || g FROM generate_series(1, 200, 3) g;
             INSERT INTO projects SELECT '{org}', g, 'project ' || g FROM generate_series(1, 5) g;
             INSERT INTO project_files (project_org, project_id, path) SELECT '{org}', 1 + g % 5, '/f/' || g FROM generate_series(1, 40) g;
             INSERT INTO org_settings VALUES ('{org}', 'dark');"
        )))
        .execute(&env.pool)
        .await
        .unwrap();
    }
}

/// The tenant's rows of each member table, written out by hand (independently of the
/// workers' membership code).
fn tenant_conditions(org: &OrganizationId) -> Vec<(&'static str, String)> {
    vec![
        ("organizations", format!("t.id = '{org}'")),
        ("invoices", format!("t.organization_id = '{org}'")),
        (
            "invoice_lines",
            format!("t.invoice_id IN (SELECT id FROM invoices WHERE organization_id = '{org}')"),
        ),
        (
            "line_notes",
            format!(
                "t.line_id IN (SELECT l.id FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
                 WHERE i.organization_id = '{org}')"
            ),
        ),
        ("projects", format!("t.organization_id = '{org}'")),
        ("project_files", format!("t.project_org = '{org}'")),
        ("org_settings", format!("t.org = '{org}'")),
    ]
}

/// Order-independent content and count of `org`'s rows, per member table, in `schema`
/// (`public`, or a staging schema holding only the tenant's rows when `all` is set).
async fn tenant_rows(env: &TestEnv, org: &OrganizationId, schema: &str, all: bool) -> Vec<String> {
    let mut v = Vec::new();
    for (table, cond) in tenant_conditions(org) {
        let filter = if all { "" } else { cond.as_str() };
        let digest = rows_digest(&env.pool, schema, table, filter).await;
        v.push(format!("{table}:{digest}"));
    }
    v
}

/// A PROMOTE that must complete.
async fn promoted(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
    record: &str,
) {
    let events = promote(tap, p, org, record).await;
    assert!(
        matches!(
            events.last().unwrap().env.event,
            Some(Event::RestoreCompleted(_))
        ),
        "{events:?}"
    );
}

async fn manifest(env: &TestEnv, record: &str) -> serde_json::Value {
    sqlx::query_scalar("SELECT manifest FROM pf_backup_records WHERE id = $1::uuid")
        .bind(record)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn tables_reached_by_keys_and_the_root_row_are_backed_up_staged_and_promoted_even_after_the_tenant_was_deleted()
 {
    let env = TestEnv::new().await;
    let (org, other, ghost) = (
        OrganizationId::new(),
        OrganizationId::new(),
        OrganizationId::new(),
    );
    seed(&env, &[(&org, 0), (&other, 100_000)]).await;
    let (shutdown, worker) = start_with(&env, &[("DR_TENANT_ROOT", ROOT.into())]);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;

    let record = backup(&env, &tap, &p, &org).await;
    let backed_up = tenant_rows(&env, &org, "public", false).await;
    assert!(
        backed_up.iter().all(|d| !d.ends_with(":0")),
        "{backed_up:?}"
    );

    // The manifest holds every member table, the root first, and how each was reached.
    let m = manifest(&env, &record).await;
    let tables = m["tables"].as_array().unwrap();
    let mut names: Vec<&str> = tables.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names[0], "organizations");
    names.sort();
    let mut expected = MEMBERS.to_vec();
    expected.sort();
    assert_eq!(names, expected, "every member table, no global one");
    let reach = |name: &str| tables.iter().find(|t| t["name"] == name).unwrap()["reach"].clone();
    assert_eq!(reach("organizations")["via"], "root");
    assert_eq!(reach("invoices")["via"], "tenant_column");
    let notes = reach("line_notes");
    assert_eq!(notes["via"], "path");
    let hops: Vec<&str> = notes["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["parent"].as_str().unwrap())
        .collect();
    assert_eq!(hops, ["invoice_lines", "invoices"]);
    assert_eq!(
        reach("project_files")["hops"][0]["columns"],
        serde_json::json!(["project_org", "project_id"])
    );
    assert_eq!(
        reach("org_settings")["column"],
        "id",
        "reached through the root"
    );
    for t in tables {
        let name = t["name"].as_str().unwrap();
        let (_, cond) = tenant_conditions(&org)
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        let live: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM public.{name} t WHERE {cond}"
        )))
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(
            t["row_count"].as_i64().unwrap(),
            live,
            "{name}: exactly the tenant's rows"
        );
    }
    assert!(m["extra"].get("tenant_root_row_missing").is_none());

    // STAGING holds every member table with exactly the tenant's rows, and its checks pass.
    let done = stage(&tap, &p, &org, &record).await;
    let staged: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
    )
    .bind(&done.staging_schema)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(staged, expected);
    assert_eq!(
        tenant_rows(&env, &org, &done.staging_schema, true).await,
        backed_up
    );
    assert!(
        failed_checks(&env.pool, &done.restore_job_id)
            .await
            .is_empty()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        done.staging_schema
    )))
    .execute(&env.pool)
    .await
    .unwrap();

    // Change the tenant in every table, and add a global note (no line: nobody's).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE organizations SET name = 'renamed' WHERE id = '{org}';
         UPDATE invoice_lines SET amount = amount + 1 WHERE invoice_id IN (SELECT id FROM invoices WHERE organization_id = '{org}');
         DELETE FROM line_notes WHERE line_id BETWEEN 1 AND 90;
         INSERT INTO invoice_lines VALUES (900, 1, 7, 'added after the backup');
         INSERT INTO line_notes (line_id, body) VALUES (900, 'on the new line'), (NULL, 'another note of nobody');
         DELETE FROM project_files WHERE project_org = '{org}' AND project_id = 2;
         UPDATE org_settings SET theme = 'light' WHERE org = '{org}';"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let changed = tenant_rows(&env, &org, "public", false).await;
    for (i, (a, b)) in changed.iter().zip(&backed_up).enumerate() {
        if MEMBERS[i] != "invoices" && MEMBERS[i] != "projects" {
            assert_ne!(a, b, "{} changed", MEMBERS[i]);
        }
    }
    let outside = fingerprint_except(&env.pool, &tenant_conditions(&org)).await;
    assert!(outside.contains_key("public.countries") && outside.contains_key("public.tag_a"));

    promoted(&tap, &p, &org, &record).await;
    assert_eq!(
        tenant_rows(&env, &org, "public", false).await,
        backed_up,
        "every member table is back exactly as backed up"
    );
    assert_eq!(
        fingerprint_except(&env.pool, &tenant_conditions(&org)).await,
        outside,
        "other tenants, global rows of member tables and global tables are untouched"
    );

    // The tenant deleted whole, root row and all (everything cascades from it; its badge
    // outside the tenant schema goes first).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DELETE FROM ext.badges WHERE org_slug = 'org-0'; DELETE FROM organizations WHERE id = '{org}';"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    assert!(
        tenant_rows(&env, &org, "public", false)
            .await
            .iter()
            .all(|d| d.ends_with(":0"))
    );
    let outside = fingerprint_except(&env.pool, &tenant_conditions(&org)).await;
    promoted(&tap, &p, &org, &record).await;
    assert_eq!(
        tenant_rows(&env, &org, "public", false).await,
        backed_up,
        "a deleted tenant is restored whole"
    );
    assert_eq!(
        fingerprint_except(&env.pool, &tenant_conditions(&org)).await,
        outside
    );
    assert!(staging_schemas(&env.pool).await.is_empty());
    // Keys hold for ordinary writers afterwards.
    let bad = sqlx::query("INSERT INTO line_notes (line_id, body) VALUES (999999, 'x')")
        .execute(&env.pool)
        .await;
    assert!(bad.is_err());

    // An organization with no root row: the backup completes with no rows and says so.
    let record = backup(&env, &tap, &p, &ghost).await;
    let m = manifest(&env, &record).await;
    assert_eq!(m["extra"]["tenant_root_row_missing"], true);
    assert_eq!(m["row_count"], 0);
    let empty: bool = sqlx::query_scalar("SELECT empty FROM pf_backup_records WHERE id = $1::uuid")
        .bind(&record)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(
        empty,
        "a backup of an organization the root table does not know is empty"
    );

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_named_tier_takes_the_path_of_its_tables_and_a_table_of_nobody_is_refused() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed(&env, &[(&org, 0), (&other, 100_000)]).await;
    sqlx::query(
        "INSERT INTO pf_backup_tiers (id, organization_id, name, tables) VALUES \
         (gen_random_uuid(), NULL, 'notes', '{line_notes}'), (gen_random_uuid(), NULL, 'tags', '{tag_a}')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    // Without DR_TENANT_ROOT the root and what hangs off it alone are not members.
    let (shutdown, worker) = start(&env);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;

    let outcome = |tier: &'static str| {
        let cmd = backup_command(&org, tier, &token(&org, &["pf.backup.create"]));
        let (tap, p) = (&tap, &p);
        async move {
            publish_command(p, &cmd).await;
            let corr = cmd.correlation_id.clone();
            tap.wait_until(60, "backup outcome", |ev| {
                ev.iter().any(|e| {
                    e.env.correlation_id == corr
                        && matches!(e.kind(), "backup_completed" | "backup_failed")
                })
            })
            .await;
            tap.for_correlation(&corr).last().unwrap().env.event.clone()
        }
    };
    let Some(Event::BackupCompleted(done)) = outcome("notes").await else {
        panic!("notes tier")
    };
    let m = manifest(&env, &done.backup_record_id).await;
    let names: Vec<&str> = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["invoices", "invoice_lines", "line_notes"],
        "parents first"
    );
    assert_eq!(m["tables"][2]["row_count"], 67);

    let Some(Event::BackupFailed(failed)) = outcome("tags").await else {
        panic!("tags tier")
    };
    assert_eq!(failed.error_code, "TIER_TABLE_NOT_TENANT_SCOPED");

    // Full without a root: organizations and org_settings are global, the rest as before.
    let record = backup(&env, &tap, &p, &org).await;
    let m = manifest(&env, &record).await;
    let mut names: Vec<&str> = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "invoice_lines",
            "invoices",
            "line_notes",
            "project_files",
            "projects"
        ]
    );

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn the_root_row_is_updated_not_deleted_and_rows_outside_still_referencing_its_old_values_refuse_the_promotion()
 {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed(&env, &[(&org, 0), (&other, 100_000)]).await;
    let (shutdown, worker) = start_with(&env, &[("DR_TENANT_ROOT", ROOT.into())]);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;

    // The slug moves (its badge follows by ON UPDATE CASCADE) and a new badge uses it: the
    // backup's slug would leave both dangling.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE organizations SET slug = 'moved' WHERE id = '{org}';
         INSERT INTO ext.badges (org_slug) VALUES ('moved');"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let everything = fingerprint_except(&env.pool, &[]).await;
    let cmd = restore_command(
        &org,
        &record,
        v1::RestoreMode::Promote,
        &token(&org, &["pf.backup.restore", "pf.backup.promote"]),
    );
    let events = run_command(&tap, &p, &cmd).await;
    let Some(Event::RestoreFailed(failed)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    assert_eq!(failed.error_code, "PROMOTE_WOULD_ORPHAN", "{failed:?}");
    assert!(
        failed
            .message
            .contains("badges(org_slug) → organizations: 2 rows"),
        "{}",
        failed.message
    );
    assert_eq!(fingerprint_except(&env.pool, &[]).await, everything);

    // Back to the old slug: the promotion updates the root row in place.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DELETE FROM ext.badges WHERE org_slug = 'moved' AND id > 2;
         UPDATE organizations SET slug = 'org-0', name = 'renamed' WHERE id = '{org}';"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    promoted(&tap, &p, &org, &record).await;
    let name: String = sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
        .bind(org.as_uuid())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(name, "org 0");

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}
