//! Fault points for tests. A test arms a fault at a named point for one organization; the
//! job of that organization that reaches the point then fails, panics or stalls there. Keyed
//! by organization so tests running side by side in one process do not see each other's
//! faults.
//!
//! Only with the cargo feature `fault-injection`, which this crate enables for its own tests
//! (a dev-dependency on itself). Without it [`hit`] and [`hit_blocking`] are empty and
//! [`arm`] does not exist, so a release build has no way to inject anything.

use crate::handler::JobError;

/// What happens at an armed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with a transient error: the job is retried.
    Transient,
    /// Fail with a permanent error: the job fails.
    Permanent,
    /// Panic in whatever task or thread reaches the point.
    Panic,
    /// Never move on: the job stalls, and only the stall watchdog ends it.
    Stall,
    /// Wait this long, then go on as if nothing happened (holds a step open for a test).
    Pause(std::time::Duration),
}

/// Env var of the deliberately broken intake, for proving that the fault-injection suite
/// (`drfleet-chaos`) can fail: set to N (≥ 1) in a build with the `fault-injection` feature,
/// the intake acks every delivery before its job is durable and then drops one delivery in N
/// (chosen by the message id), as a worker killed between that early ack and its commit
/// would. Builds without the feature ignore it.
pub const ACK_BEFORE_DURABLE_ENV: &str = "DRFLEET_FAULT_ACK_BEFORE_DURABLE";

/// Named points in the backup and restore pipelines.
pub mod point {
    /// Backup: the snapshot is taken and the tables resolved, before the first export.
    pub const BACKUP_AFTER_SNAPSHOT: &str = "backup.after_snapshot";
    /// Staging schema created, before the first segment's COPY.
    pub const BEFORE_FIRST_SEGMENT: &str = "restore.before_first_segment";
    /// Inside a segment's COPY, after some rows were sent.
    pub const MID_SEGMENT: &str = "restore.mid_segment";
    /// A segment committed, before the next one starts.
    pub const BETWEEN_SEGMENTS: &str = "restore.between_segments";
    /// The artifact decoder's helper thread.
    pub const DECODE: &str = "restore.decode";
    /// Reading a committed segment back (a helper task).
    pub const READ_BACK: &str = "restore.read_back";
    /// The integrity checks after the load.
    pub const CHECKS: &str = "restore.checks";
    /// Inside the promotion's transaction, after the delete and before the insert.
    pub const SWAP: &str = "restore.swap";
    /// Retention: expired backups marked `expiring`, before any object is deleted.
    pub const RETENTION_AFTER_MARK: &str = "retention.after_mark";
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::Mutex;

    use super::Fault;

    pub(super) struct Armed {
        pub org: String,
        pub point: &'static str,
        pub fault: Fault,
        pub remaining: u32,
        pub fired: u32,
    }

    pub(super) static FAULTS: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

    /// The fault to trigger now at `point` for `org`, if one is armed.
    pub(super) fn take(org: &str, point: &str) -> Option<Fault> {
        let mut faults = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
        let a = faults
            .iter_mut()
            .find(|a| a.org == org && a.point == point && a.remaining > 0)?;
        a.remaining -= 1;
        a.fired += 1;
        Some(a.fault)
    }
}

/// Arm `fault` at `point` for the jobs of `org`, for its next `times` hits.
#[cfg(feature = "fault-injection")]
pub fn arm(org: &str, point: &'static str, fault: Fault, times: u32) {
    let mut faults = armed::FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    faults.retain(|a| !(a.org == org && a.point == point));
    faults.push(armed::Armed {
        org: org.to_string(),
        point,
        fault,
        remaining: times,
        fired: 0,
    });
}

/// How often the fault armed at `point` for `org` has fired.
#[cfg(feature = "fault-injection")]
pub fn fired(org: &str, point: &str) -> u32 {
    let faults = armed::FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    faults
        .iter()
        .find(|a| a.org == org && a.point == point)
        .map_or(0, |a| a.fired)
}

#[cfg(feature = "fault-injection")]
fn injected(point: &'static str, fault: Fault) -> JobError {
    match fault {
        Fault::Transient => JobError::transient("INJECTED_FAULT", point),
        _ => JobError::permanent("INJECTED_FAULT", point),
    }
}

/// The broken intake of [`ACK_BEFORE_DURABLE_ENV`]: `None` when it is off (always without the
/// feature), else whether this delivery (by its message id) is the one in N that is dropped
/// after the early ack.
pub(crate) fn ack_before_durable(message_id: &str) -> Option<bool> {
    #[cfg(feature = "fault-injection")]
    {
        use std::sync::OnceLock;
        static ONE_IN: OnceLock<Option<u64>> = OnceLock::new();
        let n = (*ONE_IN.get_or_init(|| {
            let n = std::env::var(ACK_BEFORE_DURABLE_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|n| *n >= 1);
            if let Some(n) = n {
                tracing::warn!(
                    one_in = n,
                    "BROKEN BUILD: {ACK_BEFORE_DURABLE_ENV} is set; deliveries are acked before their job is durable and some are dropped"
                );
            }
            n
        }))?;
        use sha2::Digest;
        let h = sha2::Sha256::digest(message_id.as_bytes());
        let v = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
        Some(v % n == 0)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = message_id;
        None
    }
}

/// Reach `point` on an async task.
#[inline]
pub(crate) async fn hit(org: &str, point: &'static str) -> Result<(), JobError> {
    #[cfg(feature = "fault-injection")]
    if let Some(f) = armed::take(org, point) {
        match f {
            Fault::Panic => panic!("injected panic at {point}"),
            Fault::Stall => std::future::pending::<()>().await,
            Fault::Pause(d) => tokio::time::sleep(d).await,
            f => return Err(injected(point, f)),
        }
    }
    let _ = (org, point);
    Ok(())
}

/// Reach `point` on a blocking thread. A stall sleeps for a long but bounded time, so a
/// test process does not keep the thread forever.
#[inline]
pub(crate) fn hit_blocking(org: &str, point: &'static str) -> Result<(), JobError> {
    #[cfg(feature = "fault-injection")]
    if let Some(f) = armed::take(org, point) {
        match f {
            Fault::Panic => panic!("injected panic at {point}"),
            Fault::Stall => std::thread::sleep(std::time::Duration::from_secs(300)),
            Fault::Pause(d) => std::thread::sleep(d),
            f => return Err(injected(point, f)),
        }
    }
    let _ = (org, point);
    Ok(())
}
