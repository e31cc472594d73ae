//! PostgreSQL pool and migrations.

use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Secret;
use crate::error::Retry;

/// The migrations under `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Display is one line naming the cause (host, port, database and user names; never the
/// password or the URL).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{reason}")]
    Connect {
        reason: String,
        /// Retrying cannot help: the database does not exist, the credentials are refused,
        /// nothing listens on the address, the host name does not resolve.
        permanent: bool,
        sqlstate: Option<String>,
        #[source]
        source: Option<sqlx::Error>,
    },
    #[error("migrations failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl DbError {
    /// Whether the process should stop instead of retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            DbError::Connect { permanent, .. } => *permanent,
            DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => !e.is_transient(),
            DbError::Migrate(_) => true,
        }
    }
}

impl Retry for DbError {
    fn is_transient(&self) -> bool {
        !self.is_permanent()
    }
}

/// Name a connection failure. Connecting through a pool would retry "connection refused"
/// until its timeout and then report only `PoolTimedOut`, so the first connection is made
/// alone and its error classified here.
fn classify(e: sqlx::Error, opts: &PgConnectOptions) -> DbError {
    let at = match opts.get_socket() {
        Some(dir) => format!("socket {}", dir.display()),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    };
    let user = opts.get_username();
    let database = opts.get_database().unwrap_or(user);
    let sqlstate = crate::error::sqlstate(&e);
    let (permanent, reason) = match (&e, sqlstate.as_deref()) {
        (_, Some("3D000")) => (
            true,
            format!(
                "database \"{database}\" does not exist on {at} (create it: createdb -h {} -p {} -U {user} {database})",
                opts.get_host(),
                opts.get_port()
            ),
        ),
        (_, Some("28P01" | "28000")) => (
            true,
            format!("authentication failed for user \"{user}\" on {at}"),
        ),
        (_, Some("42501")) => (
            true,
            format!("user \"{user}\" may not connect to database \"{database}\" on {at}"),
        ),
        (sqlx::Error::Io(io), _) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            (true, format!("connection refused by {at}"))
        }
        (sqlx::Error::Io(io), _)
            if io.to_string().contains("Name or service not known")
                || io.to_string().contains("No address associated") =>
        {
            (true, format!("host {} not found", opts.get_host()))
        }
        (sqlx::Error::Io(io), _) => (false, format!("cannot reach {at}: {}", io.kind())),
        (sqlx::Error::Tls(_), _) => (false, format!("TLS handshake with {at} failed")),
        (sqlx::Error::Database(db), Some(code)) => (
            !e.is_transient(),
            format!(
                "{at} refused the connection: sqlstate {code} ({})",
                db.message()
            ),
        ),
        _ => (false, format!("cannot connect to {at}")),
    };
    DbError::Connect {
        reason,
        permanent,
        sqlstate,
        source: Some(e),
    }
}

/// Connect a pool. `max` connections; acquisition waits at most 10 s. The first connection
/// is opened alone so that its failure is named ([`DbError::is_permanent`] says whether to
/// retry).
pub async fn connect(url: &Secret<String>, app: &str, max: u32) -> Result<PgPool, DbError> {
    let opts: PgConnectOptions = url
        .expose()
        .parse::<PgConnectOptions>()
        .map_err(|_| DbError::Connect {
            reason: "the database URL is invalid".into(),
            permanent: true,
            sqlstate: None,
            source: None,
        })?
        .application_name(app);
    match tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await {
        Err(_) => {
            return Err(DbError::Connect {
                reason: format!(
                    "no answer from {}:{} within {} s",
                    opts.get_host(),
                    opts.get_port(),
                    CONNECT_TIMEOUT.as_secs()
                ),
                permanent: false,
                sqlstate: None,
                source: None,
            });
        }
        Ok(Err(e)) => return Err(classify(e, &opts)),
        Ok(Ok(probe)) => {
            let _ = sqlx::Connection::close(probe).await;
        }
    }
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(opts.clone())
        .await
        .map_err(|e| classify(e, &opts))
}

/// Apply pending migrations. sqlx holds a PostgreSQL advisory lock meanwhile, so several
/// processes starting at once apply them exactly once.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(DbError::Migrate)
}
