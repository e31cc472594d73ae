//! The keys role (queue `dr.keys`): the key hierarchy's operations. Touches no artifact's
//! content: rotation re-wraps tenant keys (rows of `pf_tenant_keys`), a shred destroys them.
//!
//! - `KeysCommand { ROTATE_MASTER }` → [`rotate::master`]: every tenant key of the fleet
//!   re-wrapped under the worker's current master key, in batches; `master_key_rotated`.
//! - `KeysCommand { ROTATE_TENANT }` → [`rotate::tenant`]: the organization's active key
//!   retired (the next backup starts a new one); `tenant_key_rotated`.
//! - `ShredCommand` → [`shred`]: the two-person rule, then every key of the organization
//!   destroyed, its records marked shredded, its objects deleted best effort;
//!   `tenant_shred_requested` / `tenant_shredded`.
//!
//! Concurrency keys: `keys:master` for a rotation, `keys:<org>` for an organization's
//! actions, so two shred requests of one organization are decided one after the other.

mod rotate;
mod shred;

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::PgConnection;

use drfleet_infra::auth::Actor;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{CommandBody, KeysAction, ReasonCode, Rejection, ValidCommand};

use crate::engine::RoleCtx;
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler};
use crate::outbox;

pub struct KeysHandler {
    ctx: Arc<RoleCtx>,
}

impl KeysHandler {
    pub fn new(ctx: Arc<RoleCtx>) -> Self {
        Self { ctx }
    }
}

impl JobHandler for KeysHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Keys
    }

    fn admit<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        Box::pin(async move {
            match &cmd.body {
                CommandBody::Keys(k) if k.action == KeysAction::RotateMaster => Ok(Admission {
                    concurrency_key: "keys:master".into(),
                }),
                CommandBody::Keys(_) => Ok(Admission {
                    concurrency_key: format!("keys:{}", cmd.organization_id),
                }),
                CommandBody::Shred(s) => shred::admit(tx, cmd, actor, s).await,
                _ => Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "not a keys command",
                ))),
            }
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            match &ctx.job.spec {
                CommandBody::Keys(k) => match k.action {
                    KeysAction::RotateMaster => rotate::master(&self.ctx, ctx).await,
                    KeysAction::RotateTenant => rotate::tenant(ctx).await,
                },
                CommandBody::Shred(_) => shred::run(&self.ctx, ctx).await,
                _ => Err(JobError::permanent(
                    "SPEC_MISMATCH",
                    "job is not a keys command",
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
            let action = match &job.spec {
                CommandBody::Keys(k) => k.action.as_str(),
                CommandBody::Shred(_) => "shred",
                _ => return Ok(()),
            };
            let ev = job.event(Event::KeysFailed(v1::KeysFailed {
                action: action.into(),
                error_code: err.code.to_string(),
                message: err.message.to_string(),
            }));
            outbox::enqueue(tx, &ev).await
        })
    }
}
