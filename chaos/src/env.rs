//! The run's own services: a metadata database, a source (tenant) database, a RabbitMQ
//! vhost, a moto S3 server on a free port with its bucket, and the TCP proxies the workers
//! reach PostgreSQL and S3 through. Nothing is shared with other runs or tests, so faults
//! hurt only this run (except `--broker-restart`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use object_store::aws::AmazonS3Builder;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::cli::Cli;
use crate::proxy::Proxy;

/// `application_name` of the harness's own connections: database faults spare them.
pub const HARNESS_APP: &str = "drfleet-chaos";

/// Name of the drill target in the drill workers' DR_RESTORE_TARGETS (and DR_DRILL_TARGET).
pub const DRILL_TARGET: &str = "drill";
/// A second name the drill workers know, for the source database itself: a drill naming it
/// must be refused (a poison message does).
pub const SOURCE_ALIAS_TARGET: &str = "source";

/// Startup option on every connection of a drill worker to the source or the drill target:
/// `-c chaos.writer=drill`, read by the source's guard triggers ([`crate::tenants`]).
const DRILL_MARK: &str = "options=-c%20chaos.writer%3Ddrill";

/// `url` (without a query) with the drill marking.
fn marked(url: &str) -> String {
    format!("{url}?{DRILL_MARK}")
}

/// What a drill worker adds to the common worker env: its restore targets (the drill
/// database, and the source under another name, which it must refuse), its default target,
/// and its source URL, all marked.
fn drill_worker_env(target_url: &str, src_url: &str) -> Vec<(String, String)> {
    vec![
        (
            "DR_RESTORE_TARGETS".into(),
            format!("{DRILL_TARGET}={target_url},{SOURCE_ALIAS_TARGET}={src_url}"),
        ),
        ("DR_DRILL_TARGET".into(), DRILL_TARGET.into()),
        ("DR_SOURCE_DATABASE_URL".into(), src_url.into()),
    ]
}

pub struct Services {
    pub run_id: String,
    pub run_dir: PathBuf,
    pub vhost: String,
    pub amqp_url: String,
    pub admin_url: String,
    pub meta_db: String,
    pub src_db: String,
    /// The drill workers' restore target (DR_DRILL_TARGET): drills' scratch schemas go here.
    pub drill_db: String,
    /// The harness's own (direct) connections.
    pub meta: PgPool,
    pub src: PgPool,
    pub drill: PgPool,
    /// What the workers use: through the PostgreSQL proxy.
    pub worker_meta_url: String,
    pub worker_src_url: String,
    /// The drill target and the source as the drill workers reach them: through the proxy,
    /// every connection marked (`chaos.writer=drill`) so the source's guard can tell a
    /// drill's write from anybody else's.
    pub drill_target_url: String,
    pub drill_src_url: String,
    pub pg_proxy: Proxy,
    pub s3_proxy: Proxy,
    pub moto: tokio::sync::Mutex<Child>,
    pub moto_pid: i32,
    pub bucket: String,
    /// Direct to moto (not through the proxy), for the audit's listing.
    pub store: Arc<dyn object_store::ObjectStore>,
    pub master_key: String,
    pub jwt_secret: String,
    pub rabbitmqctl: String,
    pub stop: CancellationToken,
}

fn random_b64(n: usize) -> String {
    let mut bytes = Vec::with_capacity(n);
    while bytes.len() < n {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    bytes.truncate(n);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `rabbitmqctl ARGS` → stdout, or an error with its stderr.
pub async fn rabbitmqctl(bin: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {bin}"))?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn harness_pool(url: &str, max: u32) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(url)?
        .application_name(HARNESS_APP)
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await?)
}

/// A free loopback port (bound and released; moto binds it right after).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Plain HTTP/1.1 request to moto (no client library needed for two calls).
async fn http(addr: SocketAddr, method: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

impl Services {
    pub async fn start(cli: &Cli, run_dir: &Path) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let vhost = format!("drchaos-{run_id}");
        rabbitmqctl(&cli.rabbitmqctl, &["add_vhost", &vhost]).await?;
        rabbitmqctl(
            &cli.rabbitmqctl,
            &["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"],
        )
        .await?;
        let amqp_url = format!("{}/{}", cli.amqp_base.trim_end_matches('/'), vhost);

        let admin_opts = PgConnectOptions::from_str(&cli.pg_admin_url)
            .context("--pg-admin-url is not a PostgreSQL URL")?;
        let pg_target: SocketAddr =
            tokio::net::lookup_host((admin_opts.get_host().to_string(), admin_opts.get_port()))
                .await?
                .next()
                .context("PostgreSQL host does not resolve")?;
        let mut admin = PgConnection::connect(&cli.pg_admin_url)
            .await
            .context("PostgreSQL admin connection")?;
        let (meta_db, src_db, drill_db) = (
            format!("drchaos_{run_id}_meta"),
            format!("drchaos_{run_id}_src"),
            format!("drchaos_{run_id}_drill"),
        );
        for db in [&meta_db, &src_db, &drill_db] {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&mut admin)
                .await?;
        }
        let _ = admin.close().await;
        let url_for = |host: &str, db: &str| {
            let (scheme_user, _) = cli
                .pg_admin_url
                .split_once('@')
                .unwrap_or(("postgres://postgres", ""));
            format!("{scheme_user}@{host}/{db}")
        };
        let direct = format!("{}:{}", admin_opts.get_host(), admin_opts.get_port());
        // Small pools: PostgreSQL's 100 connections are shared with the fleet (and with
        // whoever else uses the server); the lanes' polls are short queries.
        let meta = harness_pool(&url_for(&direct, &meta_db), 4).await?;
        let src = harness_pool(&url_for(&direct, &src_db), 2).await?;
        let drill = harness_pool(&url_for(&direct, &drill_db), 1).await?;
        drfleet_infra::db::migrate(&meta)
            .await
            .context("migrating the run's metadata database")?;
        let pg_proxy = Proxy::start(pg_target, stop.child_token()).await?;
        let worker_meta_url = url_for(&pg_proxy.addr.to_string(), &meta_db);
        let worker_src_url = url_for(&pg_proxy.addr.to_string(), &src_db);
        let drill_target_url = marked(&url_for(&pg_proxy.addr.to_string(), &drill_db));
        let drill_src_url = marked(&worker_src_url);

        // moto keeps its objects in memory: it is frozen (SIGSTOP) rather than restarted, and
        // "stopped" is the proxy refusing connections (see faults).
        let port = free_port()?;
        let moto_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::fs::File::create(run_dir.join("moto.log"))?;
        let moto = tokio::process::Command::new(&cli.moto_server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (scripts/s3-test-server.sh installs it)",
                    cli.moto_server.display()
                )
            })?;
        let moto_pid = moto.id().context("moto pid")? as i32;
        let mut up = false;
        for _ in 0..100 {
            if http(moto_addr, "GET", "/moto-api/").await.is_some() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !up {
            bail!("moto S3 server did not start on {moto_addr}");
        }
        let bucket = format!("drchaos-{run_id}");
        let resp = http(moto_addr, "PUT", &format!("/{bucket}"))
            .await
            .unwrap_or_default();
        if !resp.starts_with("HTTP/1.1 200") {
            bail!("creating bucket {bucket} failed");
        }
        let s3_proxy = Proxy::start(moto_addr, stop.child_token()).await?;
        let store = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_endpoint(format!("http://{moto_addr}"))
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()?;
        Ok(Self {
            run_id,
            run_dir: run_dir.to_path_buf(),
            vhost,
            amqp_url,
            admin_url: cli.pg_admin_url.clone(),
            meta_db,
            src_db,
            drill_db,
            meta,
            src,
            drill,
            worker_meta_url,
            worker_src_url,
            drill_target_url,
            drill_src_url,
            pg_proxy,
            s3_proxy,
            moto: tokio::sync::Mutex::new(moto),
            moto_pid,
            bucket,
            store: Arc::new(store),
            master_key: random_b64(32),
            jwt_secret: random_b64(48),
            rabbitmqctl: cli.rabbitmqctl.clone(),
            stop,
        })
    }

    /// Env of a worker process (the roles come as a flag).
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let s3 = format!("http://{}", self.s3_proxy.addr);
        [
            ("DR_AMQP_URL", self.amqp_url.clone()),
            ("DR_DATABASE_URL", self.worker_meta_url.clone()),
            ("DR_SOURCE_DATABASE_URL", self.worker_src_url.clone()),
            (
                "DR_OBJECT_STORE_URL",
                format!("s3://{}/artifacts", self.bucket),
            ),
            ("AWS_ENDPOINT_URL", s3),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("DR_MASTER_KEY", self.master_key.clone()),
            ("DR_MASTER_KEY_ID", "chaos-k1".into()),
            ("DR_AUTH_JWT_SECRET", self.jwt_secret.clone()),
            ("DR_HTTP_ADDR", "127.0.0.1:0".into()),
            // Short leases: a killed worker's job is taken over within seconds.
            ("DR_JOB_LEASE_SECS", "4".into()),
            ("DR_JOB_STALL_SECS", "120".into()),
            ("DR_SHUTDOWN_GRACE_SECS", "5".into()),
            ("DR_STAGING_TTL", "10m".into()),
            // One job per role per process, and small pools: PostgreSQL's 100 connections
            // are shared by the fleet, the harness and whoever else uses the server. Four
            // metadata connections: LISTEN holds one, the runners, intake and relay share
            // the rest; two to each tenant database (a restore's checks read two ways).
            ("DR_JOB_CONCURRENCY", "1".into()),
            ("DR_DATABASE_POOL_SIZE", "4".into()),
            ("DR_TENANT_POOL_SIZE", "2".into()),
            ("DR_LOG_FORMAT", "text".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// What a drill worker adds to [`Self::worker_env`] (see [`drill_worker_env`]).
    pub fn drill_env(&self) -> Vec<(String, String)> {
        drill_worker_env(&self.drill_target_url, &self.drill_src_url)
    }

    pub fn scheduler_env(&self) -> Vec<(String, String)> {
        [
            ("DR_AMQP_URL", self.amqp_url.clone()),
            ("DR_DATABASE_URL", self.worker_meta_url.clone()),
            ("DR_AUTH_JWT_SECRET", self.jwt_secret.clone()),
            ("DR_HTTP_ADDR", "127.0.0.1:0".into()),
            ("DR_SCHEDULER_TICK_SECS", "1".into()),
            ("DR_RETENTION_INTERVAL_SECS", "60".into()),
            ("DR_LOG_FORMAT", "text".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Drop what the run created (unless kept). Best effort: a failure is printed, not fatal.
    pub async fn cleanup(&self, keep: bool) {
        self.stop.cancel();
        {
            let mut moto = self.moto.lock().await;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.moto_pid),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = moto.kill().await;
        }
        self.meta.close().await;
        self.src.close().await;
        self.drill.close().await;
        if keep {
            eprintln!(
                "drfleet-chaos: kept vhost {} and databases {} {} {}",
                self.vhost, self.meta_db, self.src_db, self.drill_db
            );
            return;
        }
        if let Err(e) = rabbitmqctl(&self.rabbitmqctl, &["delete_vhost", &self.vhost]).await {
            eprintln!("drfleet-chaos: cleanup: {e}");
        }
        match PgConnection::connect(&self.admin_url).await {
            Ok(mut admin) => {
                for db in [&self.meta_db, &self.src_db, &self.drill_db] {
                    let q = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
                    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(q))
                        .execute(&mut admin)
                        .await
                    {
                        eprintln!("drfleet-chaos: cleanup: dropping {db}: {e}");
                    }
                }
            }
            Err(e) => eprintln!("drfleet-chaos: cleanup: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drfleet_workers::config;

    #[test]
    fn drill_workers_refuse_the_source_alias_and_mark_their_sessions() {
        let proxy = "postgres://postgres@127.0.0.1:6123";
        let env: std::collections::HashMap<String, String> = drill_worker_env(
            &marked(&format!("{proxy}/run_drill")),
            &marked(&format!("{proxy}/run_src")),
        )
        .into_iter()
        .collect();
        // As the worker reads its settings.
        let targets = config::restore_targets(&env["DR_RESTORE_TARGETS"]).unwrap();
        assert_eq!(
            targets.keys().collect::<Vec<_>>(),
            [DRILL_TARGET, SOURCE_ALIAS_TARGET]
        );
        let source = drfleet_infra::config::Secret::new(env["DR_SOURCE_DATABASE_URL"].clone());
        let refused = config::same_database_targets(&targets, &source);
        assert_eq!(
            refused.into_iter().collect::<Vec<_>>(),
            [SOURCE_ALIAS_TARGET]
        );
        assert_eq!(
            config::drill_target(Some(&env["DR_DRILL_TARGET"]), &targets).unwrap(),
            Some(DRILL_TARGET.to_string())
        );
        for url in [targets[DRILL_TARGET].expose(), source.expose()] {
            let opts: PgConnectOptions = url.parse().unwrap();
            assert_eq!(opts.get_options(), Some("-c chaos.writer=drill"), "{url}");
        }
    }
}
