//! `drctl tiers show [NAME]`: every table a tier backs up, in the order the backup exports
//! them, and how each one's rows are found to be a tenant's (the tenant column, the tenant
//! root, or a key path) — then the tables of the tenant schema that belong to no tenant
//! (global: never backed up, never touched by a promotion). It reads the tenant database's
//! catalog with the workers' own membership code, so it says what a backup would do now.

use serde_json::json;
use sqlx::Connection;

use drfleet_infra::config::{postgres_url, sql_ident};
use drfleet_workers::engine::catalog::resolve_tables;
use drfleet_workers::engine::membership::{self, Layout, Reach};

use crate::cli::TiersShowArgs;
use crate::error::{Error, Outcome};
use crate::output::print_line;

fn reach_line(table: &str, reach: &Reach) -> serde_json::Value {
    let (via, column) = match reach {
        Reach::TenantColumn { column } => ("tenant_column", column),
        Reach::Root { column } => ("root", column),
        Reach::Path { column, .. } => ("path", column),
    };
    let mut v = json!({
        "table": table,
        "reach": via,
        "column": column,
        "how": membership::describe(table, reach),
    });
    if let Reach::Path { hops, .. } = reach {
        v["hops"] = json!(hops);
    }
    v
}

/// Print the tier's tables (JSON lines); Failed when the tier is unknown or cannot be
/// resolved (the reason on stderr).
pub async fn show(a: &TiersShowArgs) -> Result<Outcome, Error> {
    let tenant_column = sql_ident("DR_TENANT_COLUMN", &a.tenant_column)?;
    let schema = sql_ident("DR_TENANT_SCHEMA", &a.tenant_schema)?;
    let root = drfleet_workers::config::tenant_root(a.tenant_root.as_deref(), &schema)?;
    let (source_setting, source) = match (&a.source_database_url, &a.database_url) {
        (Some(u), _) => ("DR_SOURCE_DATABASE_URL", u.as_str()),
        (None, Some(u)) => ("DR_DATABASE_URL", u.as_str()),
        (None, None) => ("DR_SOURCE_DATABASE_URL", ""),
    };
    let source = postgres_url(source_setting, source)?;
    // The tier comes from the metadata database; without one, `full` is every member.
    let (all_tables, entries): (bool, Vec<String>) = match (&a.database_url, a.name.as_str()) {
        (None, "full") => (true, Vec::new()),
        (meta, _) => {
            let meta = postgres_url("DR_DATABASE_URL", meta.as_deref().unwrap_or(""))?;
            let mut conn = sqlx::PgConnection::connect(meta.expose()).await?;
            let tier: Option<(bool, Vec<String>)> = sqlx::query_as(
                "SELECT all_tables, tables FROM pf_backup_tiers WHERE name = $1 \
                   AND (organization_id = $2 OR organization_id IS NULL) \
                 ORDER BY organization_id NULLS LAST LIMIT 1",
            )
            .bind(&a.name)
            .bind(a.org.as_ref().map(|o| o.organization_id().as_uuid()))
            .fetch_optional(&mut conn)
            .await?;
            let _ = conn.close().await;
            match tier {
                Some(t) => t,
                None => {
                    eprintln!("drctl: tier {} not found", a.name);
                    return Ok(Outcome::Failed);
                }
            }
        }
    };
    let layout = Layout {
        schema: &schema,
        tenant_column: &tenant_column,
        root: root.as_ref(),
    };
    let mut conn = sqlx::PgConnection::connect(source.expose()).await?;
    let result = async {
        let tables = resolve_tables(&mut conn, &layout, all_tables, &entries).await?;
        let pins: Vec<(&str, &str)> = entries
            .iter()
            .filter_map(|e| match membership::tier_entry(e) {
                (t, Some(c)) => Some((t, c)),
                _ => None,
            })
            .collect();
        let (all, resolved) = membership::membership(&mut conn, &layout, &pins).await?;
        Ok::<_, drfleet_workers::handler::JobError>((tables, all, resolved))
    }
    .await;
    let _ = conn.close().await;
    let (tables, all, resolved) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drctl: {}: {}", e.code, e.message);
            return Ok(Outcome::Failed);
        }
    };
    for t in &tables {
        print_line(&reach_line(&t.name, &t.reach))?;
    }
    for t in all.iter().filter(|t| resolved.global.contains(&t.oid)) {
        print_line(&json!({"table": t.name, "reach": "global"}))?;
    }
    Ok(Outcome::Success)
}
