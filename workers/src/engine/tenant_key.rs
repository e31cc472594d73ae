//! The tenant key's type, read from the catalog (issue #19): `uuid`, `bigint`, `integer` or
//! `text` (`varchar` counts as text). Every tenant column of the tenant schema and the tenant
//! root's key must agree on one; otherwise the configuration is refused naming the columns
//! (at worker start: exit 2; at a backup or restore: the job fails with the same code).
//!
//! Read at start, re-read by every backup and restore (in their snapshot), and remembered in
//! [`KeyTypeCache`] so the intake can refuse a command whose `organization_id` does not fit
//! (INVALID_ARGUMENT) before it becomes a job. While the type is unknown (the tenant database
//! was unreachable so far), the intake reads it; if it still cannot, the command is admitted
//! and its job checks the key.

use std::time::Duration;

use sqlx::PgConnection;

use drfleet_protocol::tenant::{KeyType, TenantKey};
use drfleet_protocol::validate::{ReasonCode, Rejection};

use super::RoleCtx;
use super::catalog::METADATA_TABLES;
use super::membership::Layout;
use crate::handler::JobError;

/// What the last read of the catalog found (`None`: not read yet, or no tenant table).
#[derive(Debug, Default)]
pub struct KeyTypeCache(std::sync::RwLock<Option<KeyType>>);

impl KeyTypeCache {
    pub fn get(&self) -> Option<KeyType> {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn set(&self, t: Option<KeyType>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

/// The one key type of `columns` (table, column, `format_type`), or the configuration error
/// naming the columns that do not fit. `None` when there is no tenant column at all.
pub fn key_type_of(columns: &[(String, String, String)]) -> Result<Option<KeyType>, JobError> {
    let unsupported: Vec<String> = columns
        .iter()
        .filter(|(_, _, ty)| KeyType::from_pg(ty).is_none())
        .map(|(t, c, ty)| format!("{t}.{c} is {ty}"))
        .collect();
    if !unsupported.is_empty() {
        return Err(JobError::permanent(
            "TENANT_KEY_TYPE_UNSUPPORTED",
            format!(
                "tenant keys must be uuid, bigint, integer or text: {}",
                unsupported.join(", ")
            ),
        ));
    }
    let mut types: Vec<KeyType> = columns
        .iter()
        .filter_map(|(_, _, ty)| KeyType::from_pg(ty))
        .collect();
    types.dedup();
    let first = types.first().copied();
    if types.iter().all(|t| Some(*t) == first) {
        return Ok(first);
    }
    let listed: Vec<String> = columns
        .iter()
        .map(|(t, c, ty)| format!("{t}.{c} is {ty}"))
        .collect();
    Err(JobError::permanent(
        "TENANT_KEY_TYPE_MISMATCH",
        format!(
            "the tenant key columns must all have one type: {}",
            listed.join(", ")
        ),
    ))
}

/// Read the tenant key columns of the tenant schema (every table with DR_TENANT_COLUMN but
/// drfleet's own, and the root's key column) and their one type.
pub async fn read_key_type(
    conn: &mut PgConnection,
    layout: &Layout<'_>,
) -> Result<Option<KeyType>, JobError> {
    let (root_table, root_column) = match layout.root {
        Some(r) if r.schema == layout.schema => (r.table.as_str(), r.column.as_str()),
        _ => ("", ""),
    };
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND a.attnum > 0 AND NOT a.attisdropped \
           AND CASE WHEN c.relname = $3 THEN a.attname = $4 ELSE a.attname = $2 END \
         ORDER BY 1, 2",
    )
    .bind(layout.schema)
    .bind(layout.tenant_column)
    .bind(root_table)
    .bind(root_column)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| super::source_error(&e))?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(t, _, _)| !METADATA_TABLES.contains(&t.as_str()))
        .collect();
    key_type_of(&rows)
}

/// The key type as a manifest records it: the tenant column's type in its tables (for a
/// database that may not have the tables yet, such as a drill's scratch). `uuid` when no
/// table carries the column.
pub fn manifest_key_type(
    manifest: &drfleet_artifact::Manifest,
    tenant_column: &str,
) -> Result<KeyType, JobError> {
    let rows: Vec<(String, String, String)> = manifest
        .tables
        .iter()
        .flat_map(|t| {
            t.columns
                .iter()
                .filter(|c| c.name == tenant_column)
                .map(|c| (t.name.clone(), c.name.clone(), c.data_type.clone()))
        })
        .collect();
    Ok(key_type_of(&rows)?.unwrap_or(KeyType::Uuid))
}

/// The job's key does not fit the column type (it was admitted while the type was unknown,
/// or the schema changed since).
pub fn check_job_key(ty: KeyType, key: &TenantKey) -> Result<(), JobError> {
    if ty.admits(key) {
        Ok(())
    } else {
        Err(JobError::permanent(
            "TENANT_KEY_INVALID",
            format!("organization_id does not fit the tenant key type {ty}"),
        ))
    }
}

/// How long the intake (and start-up) waits for the tenant database to tell the key type.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

impl RoleCtx {
    /// Read the key type now (own connection) and remember it.
    pub async fn read_key_type(&self) -> Result<Option<KeyType>, JobError> {
        let mut conn = self
            .source
            .acquire()
            .await
            .map_err(|e| super::source_error(&e))?;
        let t = read_key_type(&mut conn, &self.layout()).await?;
        self.key_type.set(t);
        Ok(t)
    }

    /// At worker start: a schema whose key columns disagree (or have another type) stops the
    /// process with that message; an unreachable tenant database only delays the read.
    pub async fn check_key_type_at_start(&self) -> Result<(), String> {
        match tokio::time::timeout(READ_TIMEOUT, self.read_key_type()).await {
            Ok(Ok(t)) => {
                tracing::info!(
                    tenant_key_type = t.map(KeyType::as_str).unwrap_or("none"),
                    "tenant key type read from the catalog"
                );
                Ok(())
            }
            Ok(Err(e)) if e.code.starts_with("TENANT_KEY_TYPE") => {
                Err(format!("tenant schema ({}): {}", e.code, e.message))
            }
            Ok(Err(e)) => {
                tracing::warn!(code = %e.code, "tenant key type not read at start; read later");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("tenant key type not read at start (timeout); read later");
                Ok(())
            }
        }
    }

    /// Intake: refuse a command whose tenant key does not fit the key type. Never echoes the
    /// key. Admits when the type cannot be read now (the job checks it).
    pub async fn admit_key(&self, key: &TenantKey) -> Result<(), Rejection> {
        let ty = match self.key_type.get() {
            Some(t) => Some(t),
            None => match tokio::time::timeout(READ_TIMEOUT, self.read_key_type()).await {
                Ok(Ok(t)) => t,
                _ => None,
            },
        };
        match ty {
            Some(t) if !t.admits(key) => Err(Rejection::new(
                ReasonCode::InvalidArgument,
                format!("organization_id does not fit the tenant key type {t}"),
            )),
            _ => Ok(()),
        }
    }

    /// In a job, inside its snapshot: the key type as the catalog has it now (remembered),
    /// checked against the job's key. `uuid` when no table has a tenant key column.
    pub async fn job_key_type(
        &self,
        conn: &mut PgConnection,
        key: &TenantKey,
    ) -> Result<KeyType, JobError> {
        let t = read_key_type(conn, &self.layout()).await?;
        self.key_type.set(t);
        let t = t.unwrap_or(KeyType::Uuid);
        check_job_key(t, key)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(v: &[(&str, &str)]) -> Vec<(String, String, String)> {
        v.iter()
            .map(|(t, ty)| (t.to_string(), "company_id".to_string(), ty.to_string()))
            .collect()
    }

    #[test]
    fn one_type_or_an_error_naming_the_columns() {
        assert_eq!(key_type_of(&[]).unwrap(), None);
        assert_eq!(
            key_type_of(&cols(&[("ads", "bigint"), ("campaigns", "bigint")])).unwrap(),
            Some(KeyType::Bigint)
        );
        assert_eq!(
            key_type_of(&cols(&[("a", "text"), ("b", "character varying(64)")])).unwrap(),
            Some(KeyType::Text)
        );
        let e = key_type_of(&cols(&[("ads", "bigint"), ("campaigns", "text")])).unwrap_err();
        assert_eq!(e.code, "TENANT_KEY_TYPE_MISMATCH");
        assert!(
            e.message.contains("ads.company_id is bigint"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("campaigns.company_id is text"),
            "{}",
            e.message
        );
        let e = key_type_of(&cols(&[("ads", "bigint"), ("campaigns", "integer")])).unwrap_err();
        assert_eq!(e.code, "TENANT_KEY_TYPE_MISMATCH");
        let e = key_type_of(&cols(&[("ads", "numeric(10,0)")])).unwrap_err();
        assert_eq!(e.code, "TENANT_KEY_TYPE_UNSUPPORTED");
        assert!(e.message.contains("ads.company_id is numeric(10,0)"));
    }

    #[test]
    fn job_keys_are_checked_without_echo() {
        let k = TenantKey::parse("acme-secret").unwrap();
        let e = check_job_key(KeyType::Bigint, &k).unwrap_err();
        assert_eq!(e.code, "TENANT_KEY_INVALID");
        assert!(!e.message.contains("acme"));
        check_job_key(KeyType::Text, &k).unwrap();
    }
}
