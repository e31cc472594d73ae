//! What a role plugs into the shared runtime: a [`JobHandler`] per command kind.

use std::borrow::Cow;
use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use drfleet_infra::Retry;
use drfleet_infra::auth::Actor;
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::validate::{CommandBody, Rejection, ValidCommand};
use drfleet_protocol::{CommandId, JobId, OrganizationId};

/// A job as claimed from `pf_jobs`.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub kind: CommandKind,
    /// `OrganizationId::for_key(tenant_key)`: how metadata tables key the tenant.
    pub organization_id: OrganizationId,
    /// The tenant key as the command carried it (canonical text): selects the tenant's rows.
    pub tenant_key: TenantKey,
    pub command_id: CommandId,
    pub correlation_id: String,
    /// The token's `sub`, never a value from the envelope.
    pub actor: String,
    pub spec: CommandBody,
    /// 1 on the first run.
    pub attempt: i32,
    pub max_attempts: i32,
    /// The trace of the command that created the job (`pf_jobs.trace_context`): every
    /// attempt, on whichever worker, continues it.
    pub trace: Option<drfleet_infra::trace_context::TraceContext>,
}

impl Job {
    /// A fresh event caused by this job's command (organization, correlation and causation
    /// taken from the job).
    pub fn event(
        &self,
        event: drfleet_protocol::v1::event_envelope::Event,
    ) -> drfleet_protocol::v1::EventEnvelope {
        drfleet_protocol::events::envelope_for(
            Some(&self.tenant_key),
            &self.correlation_id,
            Some(self.command_id),
            event,
        )
    }
}

/// Why a job failed. Display carries the code only; `message` is sanitized by construction
/// (static text, codes and ids), so both may go into events and logs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}")]
pub struct JobError {
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
    pub transient: bool,
}

impl JobError {
    pub fn permanent(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: Cow::Borrowed(code),
            message: message.into(),
            transient: false,
        }
    }
    pub fn transient(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: Cow::Borrowed(code),
            message: message.into(),
            transient: true,
        }
    }
    /// A database error, classified; only the SQLSTATE is kept.
    pub fn db(e: &sqlx::Error) -> Self {
        let state = drfleet_infra::error::sqlstate(e).unwrap_or_else(|| "none".into());
        Self {
            code: Cow::Borrowed("DATABASE_ERROR"),
            message: Cow::Owned(format!("database error (sqlstate {state})")),
            transient: e.is_transient(),
        }
    }
}

impl Retry for JobError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::db(&e)
    }
}

/// Outcome of [`JobHandler::admit`].
pub enum AdmitError {
    /// Refuse the command (INVALID_ARGUMENT, NOT_FOUND, CONFLICT ...).
    Reject(Rejection),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for AdmitError {
    fn from(e: sqlx::Error) -> Self {
        AdmitError::Db(e)
    }
}

/// What admission decided for an accepted command.
pub struct Admission {
    /// Jobs with the same key never run at once (e.g. `backup:<org>:<tier>`).
    pub concurrency_key: String,
}

/// Everything a running job may use.
pub struct JobCtx {
    pub job: Job,
    pub pool: PgPool,
    /// Cancelled when the job must stop: lease lost, or shutdown grace ran out. Long steps
    /// should watch it; the runtime also drops the job's future.
    pub cancel: CancellationToken,
    /// Tick it whenever the job moves forward: a job without a tick for DR_JOB_STALL_SECS is
    /// ended (and retried or failed) instead of being kept alive by its heartbeat.
    pub progress: Progress,
    pub(crate) lease_owner: Arc<str>,
}

/// Moved to [`crate::progress`]; re-exported where the roles import it from.
pub use crate::progress::Progress;

impl JobCtx {
    /// Mark the job succeeded inside `tx`, the transaction that commits the job's final
    /// effects. Fails with `LEASE_LOST` (and the caller must roll back) when another worker
    /// has taken the job over, so a job's effects commit exactly once.
    pub async fn finish_in(&self, tx: &mut PgConnection) -> Result<(), JobError> {
        crate::jobs::mark_succeeded(tx, self.job.id, &self.lease_owner).await
    }

    pub fn lease_owner(&self) -> &str {
        &self.lease_owner
    }
}

/// One command kind's behaviour.
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> CommandKind;

    /// Checks that need the database, run in the transaction that records the command.
    /// Default: accept; one job of this kind per command.
    fn admit<'a>(
        &'a self,
        _tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        let key = format!("{}:{}", cmd.body.kind().as_str(), cmd.command_id);
        Box::pin(async move {
            Ok(Admission {
                concurrency_key: key,
            })
        })
    }

    /// Do the job. On success the handler has called [`JobCtx::finish_in`] in its final
    /// transaction (the runtime marks the job succeeded otherwise).
    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>>;

    /// Record a final failure (status rows, `*_failed` event) inside `tx`, which also marks
    /// the job failed.
    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// The handlers of one process, by kind.
#[derive(Clone, Default)]
pub struct Handlers(pub Vec<Arc<dyn JobHandler>>);

impl Handlers {
    pub fn with(mut self, h: impl JobHandler) -> Self {
        self.0.push(Arc::new(h));
        self
    }
    pub fn get(&self, kind: CommandKind) -> Option<&Arc<dyn JobHandler>> {
        self.0.iter().find(|h| h.kind() == kind)
    }
    pub fn kinds(&self) -> Vec<CommandKind> {
        self.0.iter().map(|h| h.kind()).collect()
    }
}
