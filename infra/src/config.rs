//! Settings shared by drfleet processes.
//!
//! Each setting is an env var with the `DR_` prefix and the matching clap flag. Secrets are
//! never printed: `--help` hides their env values, [`Secret`] redacts `Debug`, and validation
//! errors name the setting, never its value.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use base64::Engine as _;
use clap::error::{ContextKind, ContextValue, ErrorKind};

/// A value that must never be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(v: T) -> Self {
        Self(v)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A setting that is missing or malformed. Display names the setting and the rule, never the
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }
}

/// Print one line and exit with code 2 (the contract for bad configuration).
pub fn exit_config_error(program: &str, err: &dyn fmt::Display) -> ! {
    eprintln!("{program}: configuration error: {err}");
    std::process::exit(2)
}

/// Parse the command line; help and version print as usual, anything else wrong becomes one
/// line on stderr and exit code 2. Clap's own messages can quote values, so the line is
/// rebuilt from the error's kind and the flag's name only.
pub fn parse_cli<T: clap::Parser>(program: &str) -> T {
    match T::try_parse() {
        Ok(v) => v,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            let arg = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(s)) => s.clone(),
                Some(ContextValue::Strings(v)) => v.join(", "),
                _ => String::new(),
            };
            let line = match e.kind() {
                ErrorKind::MissingRequiredArgument => format!("missing required setting {arg}"),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
                    format!("invalid value for {arg}")
                }
                ErrorKind::UnknownArgument => format!("unknown argument {arg}"),
                _ => {
                    // Only the first line; it names the argument.
                    let text = e.kind().as_str().unwrap_or("bad command line").to_string();
                    if arg.is_empty() {
                        text
                    } else {
                        format!("{text}: {arg}")
                    }
                }
            };
            exit_config_error(program, &line)
        }
    }
}

/// Connection settings every process has.
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    /// RabbitMQ URL (vhost URL-encoded, e.g. %2f for "/").
    #[arg(
        long,
        env = "DR_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,
}

/// Logging.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format: json or text.
    #[arg(long, env = "DR_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogArgs {
    pub fn format(&self) -> Result<LogFormat, ConfigError> {
        match self.log_format.as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err(ConfigError::new("DR_LOG_FORMAT", "must be json or text")),
        }
    }
}

/// Validate an AMQP URL (scheme and parse), without echoing it.
pub fn amqp_url(setting: &'static str, url: &str) -> Result<String, ConfigError> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(ConfigError::new(
            setting,
            "must be an amqp:// or amqps:// URL",
        ));
    }
    url.parse::<lapin::uri::AMQPUri>()
        .map_err(|_| ConfigError::new(setting, "is not a valid AMQP URL"))?;
    Ok(url.to_string())
}

/// Validate a PostgreSQL URL, without echoing it.
pub fn postgres_url(setting: &'static str, url: &str) -> Result<Secret<String>, ConfigError> {
    if url.is_empty() {
        return Err(ConfigError::new(setting, "is required"));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new(setting, "must be a postgres:// URL"));
    }
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|_| ConfigError::new(setting, "is not a valid PostgreSQL URL"))?;
    Ok(Secret::new(url.to_string()))
}

/// A 32-byte key given as base64. The error says what was expected and, for base64 of the
/// wrong length, how many bytes it held; never the value.
pub fn key32(setting: &'static str, b64: &str) -> Result<Secret<[u8; 32]>, ConfigError> {
    const EXPECTED: &str = "must be base64 of 32 bytes (e.g. `head -c32 /dev/urandom | base64`)";
    let b64 = b64.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| {
            let hint = if !b64.is_empty() && b64.bytes().all(|b| b.is_ascii_hexdigit()) {
                "; got hex, not base64"
            } else {
                "; got text that is not base64"
            };
            ConfigError::new(setting, format!("{EXPECTED}{hint}"))
        })?;
    let n = bytes.len();
    let arr: [u8; 32] = bytes.try_into().map_err(|_| {
        // 64 hex digits happen to be valid base64 too (of 48 bytes).
        let hex = if b64.len() == 64 && b64.bytes().all(|b| b.is_ascii_hexdigit()) {
            ", which looks like hex; give base64"
        } else {
            ""
        };
        ConfigError::new(
            setting,
            format!("must be base64 of 32 bytes (got {n} bytes{hex})"),
        )
    })?;
    Ok(Secret::new(arr))
}

/// Key ids: `[A-Za-z0-9._-]{1,64}` (they are stored in records and artifact headers).
pub fn key_id(setting: &'static str, id: &str) -> Result<String, ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(id.to_string())
    } else {
        Err(ConfigError::new(setting, "must match [A-Za-z0-9._-]{1,64}"))
    }
}

/// A key id with its 32 key bytes.
pub type NamedKey = (String, Secret<[u8; 32]>);

/// `id:base64,id:base64` — master keys that are no longer current but must still unwrap
/// older artifacts.
pub fn previous_keys(setting: &'static str, s: &str) -> Result<Vec<NamedKey>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (id, b64) = pair
                .split_once(':')
                .ok_or_else(|| ConfigError::new(setting, "entries must be id:base64"))?;
            Ok((key_id(setting, id)?, key32(setting, b64)?))
        })
        .collect()
}

/// Identifier usable as a PostgreSQL name we quote ourselves: `[a-z_][a-z0-9_]{0,62}`.
pub fn sql_ident(setting: &'static str, s: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && (s.as_bytes()[0].is_ascii_lowercase() || s.as_bytes()[0] == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            setting,
            "must match [a-z_][a-z0-9_]{0,62}",
        ))
    }
}

pub fn socket_addr(setting: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::new(setting, "must be host:port, e.g. 127.0.0.1:8080"))
}

/// Where artifacts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreLocation {
    /// A local folder (absolute).
    Local(PathBuf),
    /// An S3-compatible bucket and key prefix; credentials and endpoint from `AWS_*`.
    S3 { bucket: String, prefix: String },
}

/// `file:///abs/path`, `file://relative/path` (to the working directory) or `s3://bucket/prefix`.
/// Empty = `./var/objects` under the working directory.
pub fn object_store_url(
    setting: &'static str,
    s: &str,
) -> Result<ObjectStoreLocation, ConfigError> {
    if s.is_empty() {
        let cwd = std::env::current_dir()
            .map_err(|_| ConfigError::new(setting, "working directory unreadable"))?;
        return Ok(ObjectStoreLocation::Local(cwd.join("var").join("objects")));
    }
    if let Some(path) = s.strip_prefix("file://") {
        if path.is_empty() {
            return Err(ConfigError::new(setting, "file:// needs a path"));
        }
        let p = PathBuf::from(path);
        let p = if p.is_absolute() {
            p
        } else {
            std::env::current_dir()
                .map_err(|_| ConfigError::new(setting, "working directory unreadable"))?
                .join(p)
        };
        return Ok(ObjectStoreLocation::Local(p));
    }
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(ConfigError::new(setting, "s3:// needs a valid bucket name"));
        }
        return Ok(ObjectStoreLocation::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    Err(ConfigError::new(
        setting,
        "must be file://<path> or s3://<bucket>/<prefix>",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_errors_never_echo_the_value() {
        let e = key32("DR_MASTER_KEY", "c2VjcmV0LW1hcmtlcg==").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid DR_MASTER_KEY: must be base64 of 32 bytes (got 13 bytes)"
        );
        let e = key32("DR_MASTER_KEY", "not base64 SECRETMARKER").unwrap_err();
        assert!(!e.to_string().contains("SECRETMARKER"));
        assert!(e.to_string().contains("must be base64 of 32 bytes"), "{e}");
        let hex = "ab".repeat(32);
        let e = key32("DR_MASTER_KEY", &hex).unwrap_err().to_string();
        assert!(e.contains("got 48 bytes") && e.contains("hex"), "{e}");
        assert!(!e.contains(&hex));
        let e = key32("DR_MASTER_KEY", "abc").unwrap_err().to_string();
        assert!(e.contains("got hex, not base64"), "{e}");
        let ok = key32(
            "DR_MASTER_KEY",
            &base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        )
        .unwrap();
        assert_eq!(ok.expose(), &[7u8; 32]);
        assert_eq!(format!("{ok:?}"), "<redacted>");
    }

    #[test]
    fn previous_keys_parse() {
        let k = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let v = previous_keys("DR_PREVIOUS_MASTER_KEYS", &format!("old-1:{k}, old-2:{k}")).unwrap();
        assert_eq!(
            v.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(),
            ["old-1", "old-2"]
        );
        assert!(previous_keys("DR_PREVIOUS_MASTER_KEYS", "nocolon").is_err());
        assert!(
            previous_keys("DR_PREVIOUS_MASTER_KEYS", "")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn urls_are_checked_without_echo() {
        let e = postgres_url("DR_DATABASE_URL", "mysql://user:SECRETPW@host/db").unwrap_err();
        assert!(!e.to_string().contains("SECRETPW"));
        assert!(postgres_url("DR_DATABASE_URL", "postgres://u@127.0.0.1:5432/db").is_ok());
        assert!(amqp_url("DR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(amqp_url("DR_AMQP_URL", "http://x").is_err());
    }

    #[test]
    fn object_store_urls() {
        assert_eq!(
            object_store_url("DR_OBJECT_STORE_URL", "s3://my-bucket/a/b/").unwrap(),
            ObjectStoreLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            object_store_url("DR_OBJECT_STORE_URL", "file:///tmp/x").unwrap(),
            ObjectStoreLocation::Local("/tmp/x".into())
        );
        assert!(object_store_url("DR_OBJECT_STORE_URL", "ftp://x").is_err());
        assert!(object_store_url("DR_OBJECT_STORE_URL", "s3://A").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(sql_ident("DR_TENANT_COLUMN", "organization_id").is_ok());
        assert!(sql_ident("DR_TENANT_COLUMN", "org\"; drop").is_err());
        assert!(key_id("DR_MASTER_KEY_ID", "k-2026.1").is_ok());
        assert!(key_id("DR_MASTER_KEY_ID", "").is_err());
    }
}
