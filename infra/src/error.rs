//! Whether an error is worth retrying.

/// Errors at drfleet boundaries say whether a retry can help.
pub trait Retry {
    /// `true` when the same operation may succeed later (connection lost, timeout,
    /// serialization failure); `false` when retrying cannot help (bad input, integrity).
    fn is_transient(&self) -> bool;
}

impl Retry for sqlx::Error {
    fn is_transient(&self) -> bool {
        match self {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => {
                // 40001 serialization_failure, 40P01 deadlock, 55P03 lock_not_available,
                // 57P01 admin_shutdown, 08* connection exceptions, 53* insufficient resources.
                let code = db.code().unwrap_or_default();
                matches!(
                    code.as_ref(),
                    "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03"
                ) || code.starts_with("08")
                    || code.starts_with("53")
            }
            _ => false,
        }
    }
}

impl Retry for lapin::Error {
    fn is_transient(&self) -> bool {
        // Broker errors are connection or channel trouble; a fresh connection may fix them.
        true
    }
}

/// The SQLSTATE of a database error, if any (for sanitized error codes).
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}
