//! The retention role (queue `dr.retention`): GFS sweeps per policy and legal holds.
//!
//! - `RetentionCommand { policy_id }` → [`sweep`]: the policy's completed backups go through
//!   [`drfleet_protocol::retention::select`] (the function `drctl retention plan` explains
//!   with); each backup no rule keeps is expired crash-safely (marked `expiring` with the
//!   decision → manifest and artifact deleted → marked `deleted` with `backup_expired` in the
//!   same transaction). The concurrency key `retention:<policy>` keeps two sweeps of one
//!   policy apart.
//! - `BackupHoldCommand` → [`hold`]: sets or clears the legal hold, `backup_hold_changed`.

mod hold;
mod sweep;

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::PgConnection;

use drfleet_infra::auth::Actor;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{CommandBody, ReasonCode, Rejection, ValidCommand};

use crate::engine::RoleCtx;
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler};
use crate::outbox;

pub struct RetentionHandler {
    ctx: Arc<RoleCtx>,
}

impl RetentionHandler {
    pub fn new(ctx: Arc<RoleCtx>) -> Self {
        Self { ctx }
    }
}

impl JobHandler for RetentionHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Retention
    }

    fn admit<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        Box::pin(async move {
            self.ctx
                .admit_key(&cmd.tenant_key)
                .await
                .map_err(AdmitError::Reject)?;
            match &cmd.body {
                CommandBody::Retention(r) => sweep::admit(tx, cmd, r).await,
                CommandBody::BackupHold(h) => hold::admit(tx, cmd, h).await,
                _ => Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "not a retention command",
                ))),
            }
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            match &ctx.job.spec {
                CommandBody::Retention(r) => sweep::run(&self.ctx, ctx, r.policy_id).await,
                CommandBody::BackupHold(h) => hold::run(ctx, h).await,
                _ => Err(JobError::permanent(
                    "SPEC_MISMATCH",
                    "job is not a retention command",
                )),
            }
        })
    }

    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let (policy_id, backup_record_id) = match &job.spec {
                CommandBody::Retention(r) => (r.policy_id.to_string(), String::new()),
                CommandBody::BackupHold(h) => (String::new(), h.backup_record_id.to_string()),
                _ => return Ok(()),
            };
            let ev = job.event(Event::RetentionFailed(v1::RetentionFailed {
                policy_id,
                backup_record_id,
                error_code: err.code.to_string(),
                message: err.message.to_string(),
            }));
            outbox::enqueue(tx, &ev).await
        })
    }
}
