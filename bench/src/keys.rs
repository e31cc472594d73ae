//! `drfleet-bench keys`: a master key rotation over N tenants (default 1,000). A keys worker
//! (release build) whose DR_MASTER_KEY is new and whose DR_PREVIOUS_MASTER_KEYS holds the old
//! one re-wraps every tenant key; timed from publishing `KeysCommand { ROTATE_MASTER }` to its
//! job's success. Its object store is an empty directory, checked still empty afterwards: no
//! artifact is read or written, so the time depends on the number of tenants only.
//!
//! The floor is the same work in process: unwrap and wrap N keys, then one `UPDATE … FROM
//! unnest(…)` of N rows. Runs alternate floor and rotation; medians are reported.

use std::time::Instant;

use anyhow::{Context, bail};
use base64::Engine as _;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use drfleet_artifact::{Keyring, MasterKey, TenantKey, WrappedTenantKey};
use drfleet_infra::amqp::{ConfirmPublisher, connect, declare_topology};
use drfleet_protocol::{OrganizationId, v1};

use super::{fresh_database, median, send, spawn_worker_env, wait_for};

const OLD: [u8; 32] = [7; 32];
/// A pf_tenant_keys row: id, organization, sealed key, nonce, master key id.
type KeyRow = (Uuid, Uuid, Vec<u8>, Vec<u8>, String);
const NEW: [u8; 32] = [9; 32];

fn masters() -> Keyring {
    Keyring::new(
        MasterKey::new("bench-2", NEW),
        vec![MasterKey::new("bench", OLD)],
    )
}

/// `tenants` fresh tenant keys, one per organization, wrapped by the old master key.
async fn seed(conn: &mut PgConnection, tenants: u32) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE pf_tenant_keys")
        .execute(&mut *conn)
        .await?;
    let old = MasterKey::new("bench", OLD);
    let (mut ids, mut orgs, mut sealed, mut nonces) = (vec![], vec![], vec![], vec![]);
    for _ in 0..tenants {
        let key = TenantKey::generate(Uuid::now_v7(), Uuid::new_v4())?;
        let w = key.wrap(&old)?;
        ids.push(key.id);
        orgs.push(key.organization_id);
        sealed.push(w.sealed.to_vec());
        nonces.push(w.nonce.to_vec());
    }
    sqlx::query(
        "INSERT INTO pf_tenant_keys (id, organization_id, state, wrapped_key, wrap_nonce, master_key_id) \
         SELECT id, org, 'active', w, n, 'bench' FROM unnest($1::uuid[], $2::uuid[], $3::bytea[], $4::bytea[]) AS u(id, org, w, n)",
    )
    .bind(&ids)
    .bind(&orgs)
    .bind(&sealed)
    .bind(&nonces)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The same re-wrap in process: read, unwrap + wrap, one UPDATE. Seconds.
async fn floor(conn: &mut PgConnection) -> anyhow::Result<f64> {
    let t = Instant::now();
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT id, organization_id, wrapped_key, wrap_nonce, master_key_id FROM pf_tenant_keys",
    )
    .fetch_all(&mut *conn)
    .await?;
    let ring = masters();
    let current = ring.master("bench-2").context("current key")?;
    let (mut ids, mut sealed, mut nonces) = (vec![], vec![], vec![]);
    for (id, org, w, n, m) in rows {
        let wrapped = WrappedTenantKey {
            nonce: n.try_into().map_err(|_| anyhow::anyhow!("nonce"))?,
            sealed: w.try_into().map_err(|_| anyhow::anyhow!("sealed"))?,
            master_key_id: m,
        };
        let again = TenantKey::unwrap(&ring, id, org, &wrapped)?.wrap(current)?;
        ids.push(id);
        sealed.push(again.sealed.to_vec());
        nonces.push(again.nonce.to_vec());
    }
    sqlx::query(
        "UPDATE pf_tenant_keys k SET wrapped_key = u.w, wrap_nonce = u.n, master_key_id = 'bench-2', rewrapped_at = now() \
         FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(id, w, n) WHERE k.id = u.id",
    )
    .bind(&ids)
    .bind(&sealed)
    .bind(&nonces)
    .execute(&mut *conn)
    .await?;
    Ok(t.elapsed().as_secs_f64())
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

pub async fn run(
    tenants: u32,
    runs: usize,
    pg_admin_url: &str,
    objects: &str,
) -> anyhow::Result<()> {
    let db_url = fresh_database(pg_admin_url, "drfleet_bench_keys").await?;
    let pool = sqlx::PgPool::connect(&db_url).await?;
    drfleet_infra::db::migrate(&pool).await?;
    let mut conn = PgConnection::connect(&db_url).await?;
    let store = std::path::Path::new(objects).join("keys-bench");
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store)?;

    let vhost = "drfleet-bench-keys";
    let b64 = base64::engine::general_purpose::STANDARD;
    let previous = format!("bench:{}", b64.encode(OLD));
    let new_key = b64.encode(NEW);
    let mut worker = spawn_worker_env(
        "keys",
        vhost,
        &db_url,
        store.to_str().context("utf-8 path")?,
        &[
            ("DR_MASTER_KEY", &new_key),
            ("DR_MASTER_KEY_ID", "bench-2"),
            ("DR_PREVIOUS_MASTER_KEYS", &previous),
        ],
    )?;
    let amqp = connect(
        &format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
        "drfleet-bench",
    )
    .await?;
    declare_topology(&amqp.create_channel().await?).await?;
    let publisher = ConfirmPublisher::new(&amqp).await?;
    let operator = OrganizationId::new();

    let (mut rotations, mut floors) = (Vec::new(), Vec::new());
    for run in 0..runs {
        seed(&mut conn, tenants).await?;
        floors.push(floor(&mut conn).await?);
        seed(&mut conn, tenants).await?;
        let started = Instant::now();
        let id = rotate(&publisher, &operator).await?;
        wait_for(
            &mut conn,
            "SELECT state FROM pf_jobs WHERE command_id = $1::uuid",
            &id,
            "succeeded",
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        let moved: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pf_tenant_keys WHERE master_key_id = 'bench-2'",
        )
        .fetch_one(&mut conn)
        .await?;
        if moved != i64::from(tenants) {
            bail!("run {run}: {moved} of {tenants} keys re-wrapped");
        }
        rotations.push(secs);
        println!(
            "run {}: rotation {:.0} ms, floor {:.0} ms",
            run + 1,
            secs * 1e3,
            floors[run] * 1e3
        );
    }
    let _ = worker.kill();
    let _ = worker.wait();
    let files = count_files(&store);
    let (rot, fl) = (median(&mut rotations), median(&mut floors));
    println!(
        "keys: master key rotation over {tenants} tenants: {:.0} ms (median of {runs}) = {:.0} ms per 1,000 tenants; \
         floor (in-process unwrap + wrap, one UPDATE) {:.0} ms; objects in the worker's store: {files}",
        rot * 1e3,
        rot * 1e3 * 1000.0 / f64::from(tenants.max(1)),
        fl * 1e3,
    );
    if files != 0 {
        bail!("the rotation wrote {files} objects");
    }
    Ok(())
}

async fn rotate(publisher: &ConfirmPublisher, operator: &OrganizationId) -> anyhow::Result<String> {
    send(
        publisher,
        operator,
        &["pf.backup.keys"],
        v1::command_envelope::Command::Keys(v1::KeysCommand {
            action: v1::keys_command::Action::RotateMaster as i32,
        }),
    )
    .await
}
