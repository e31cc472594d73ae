//! The one error type of the library, and exit codes.

use drfleet_infra::amqp::AmqpError;
use drfleet_infra::config::ConfigError;
use drfleet_infra::db::DbError;
use drfleet_protocol::validate::Rejection;

/// Success (command completed, chain intact).
pub const EXIT_OK: u8 = 0;
/// The command failed or was rejected; the audit chain is broken.
pub const EXIT_FAILED: u8 = 1;
/// Configuration error or invalid input (one line on stderr).
pub const EXIT_CONFIG: u8 = 2;
/// No outcome arrived before `--wait-secs` ran out.
pub const EXIT_TIMEOUT: u8 = 3;
/// Broker or database trouble: nothing could be concluded.
pub const EXIT_ERROR: u8 = 4;

/// Everything that stops a subcommand. Display never includes a token, a secret or a URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command we built does not pass the wire contract's validation.
    #[error("invalid command: {0}")]
    InvalidCommand(Rejection),
    #[error("RabbitMQ")]
    Amqp(#[from] AmqpError),
    #[error("RabbitMQ")]
    Broker(#[from] lapin::Error),
    #[error("the broker closed the event consumer")]
    ConsumerClosed,
    #[error("PostgreSQL")]
    Db(#[from] DbError),
    #[error("database query failed")]
    Sql(#[from] sqlx::Error),
    #[error("writing output failed")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::InvalidCommand(_) => EXIT_CONFIG,
            _ => EXIT_ERROR,
        }
    }
}

/// How a subcommand that ran to its end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
    TimedOut,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => EXIT_OK,
            Outcome::Failed => EXIT_FAILED,
            Outcome::TimedOut => EXIT_TIMEOUT,
        }
    }
}
