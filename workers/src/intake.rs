//! Command intake: one delivery in, one durable outcome out.
//!
//! decode + validate → authenticate + authorize → (in one transaction) dedup by command_id,
//! role admission checks, job row or rejection event → commit → ack or dead-letter.
//! A delivery is settled only after its outcome is committed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use drfleet_infra::Retry;
use drfleet_infra::auth::{AuthError, TokenVerifier, authorize};
use drfleet_protocol::JobId;
use drfleet_protocol::auth::required_permissions;
use drfleet_protocol::events::rejected;
use drfleet_protocol::topology::{CONTENT_TYPE, CommandKind};
use drfleet_protocol::validate::{ReasonCode, Rejection, ValidCommand, decode_command};

use crate::handler::{AdmitError, Job, JobHandler};
use crate::metrics::Metrics;
use crate::outbox;

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Outcome committed (job recorded, or a duplicate).
    Ack,
    /// Refused: `command_rejected` committed; the message goes to the dead-letter exchange.
    DeadLetter,
    /// Could not be processed now (shutdown during a retry); back to the queue.
    Requeue,
}

pub struct Intake {
    pub kind: CommandKind,
    pub handler: Arc<dyn JobHandler>,
    pub verifier: TokenVerifier,
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub job_wake: Arc<Notify>,
    pub outbox_wake: Arc<Notify>,
    pub max_attempts: i32,
}

enum Step {
    Done(Disposition),
}

impl Intake {
    /// Process and settle one delivery. Errors returned are broker errors while settling.
    pub async fn handle(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<Disposition, lapin::Error> {
        let disposition = self.process(&delivery, shutdown).await;
        match disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await?,
            Disposition::DeadLetter => {
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?
            }
            Disposition::Requeue => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?
            }
        };
        Ok(disposition)
    }

    async fn process(&self, delivery: &Delivery, shutdown: &CancellationToken) -> Disposition {
        let checked = self.check(delivery);
        // Database work retries transient errors (a restarting PostgreSQL) for a while, so a
        // short outage neither loses the command nor burns its delivery limit.
        let mut delay = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let res = match &checked {
                Ok((cmd, actor)) => self.accept(cmd, actor).await,
                Err(rej) => self.reject(rej).await,
            };
            match res {
                Ok(Step::Done(d)) => return d,
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "command intake: database unavailable; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Disposition::Requeue,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    // Permanent database trouble (schema missing, constraint) on this command:
                    // requeue counts toward the delivery limit, after which it is dead-lettered.
                    tracing::error!(error = %e, "command intake failed");
                    return Disposition::Requeue;
                }
            }
        }
    }

    /// Everything that needs no database: decoding, validation, token, permissions.
    fn check(
        &self,
        delivery: &Delivery,
    ) -> Result<(ValidCommand, drfleet_infra::auth::Actor), Rejection> {
        if let Some(ct) = delivery.properties.content_type()
            && ct.as_str() != CONTENT_TYPE
        {
            return Err(Rejection::new(
                ReasonCode::Malformed,
                "content_type must be application/x-protobuf",
            ));
        }
        let cmd = decode_command(&delivery.data, Some(self.kind))?;
        let ctx = |code, msg: &str| {
            let mut r = Rejection::new(code, msg);
            r.command_id = Some(cmd.command_id);
            r.organization_id = Some(cmd.organization_id);
            r.correlation_id = cmd.correlation_id.clone();
            r
        };
        let actor = self
            .verifier
            .verify(&cmd.actor_token)
            .map_err(|e| ctx(ReasonCode::Unauthenticated, &e.to_string()))?;
        authorize(
            &actor,
            &cmd.organization_id,
            required_permissions(&cmd.body),
        )
        .map_err(|e| match e {
            AuthError::Unauthenticated(_) => ctx(ReasonCode::Unauthenticated, &e.to_string()),
            AuthError::Forbidden(_) => ctx(ReasonCode::Forbidden, &e.to_string()),
        })?;
        Ok((cmd, actor))
    }

    #[tracing::instrument(skip_all, fields(command_id = %cmd.command_id, org = %cmd.organization_id, kind = self.kind.as_str()), err)]
    async fn accept(
        &self,
        cmd: &ValidCommand,
        actor: &drfleet_infra::auth::Actor,
    ) -> Result<Step, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let job_id = JobId::new();
        let fresh = sqlx::query(
            "INSERT INTO pf_commands (command_id, organization_id, kind, outcome, job_id) \
             VALUES ($1, $2, $3, 'accepted', $4) ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(cmd.command_id.as_uuid())
        .bind(cmd.organization_id.as_uuid())
        .bind(self.kind.as_str())
        .bind(job_id.as_uuid())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            self.metrics
                .commands_duplicate
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!("duplicate command; already recorded");
            return Ok(Step::Done(Disposition::Ack));
        }
        match self.handler.admit(&mut tx, cmd, actor).await {
            Ok(adm) => {
                let job = Job {
                    id: job_id,
                    kind: self.kind,
                    organization_id: cmd.organization_id,
                    command_id: cmd.command_id,
                    correlation_id: cmd.correlation_id.clone(),
                    actor: actor.sub.clone(),
                    spec: cmd.body.clone(),
                    attempt: 0,
                    max_attempts: self.max_attempts,
                };
                crate::jobs::insert(&mut tx, &job, &adm.concurrency_key).await?;
                tx.commit().await?;
                self.metrics
                    .commands_accepted
                    .fetch_add(1, Ordering::Relaxed);
                self.job_wake.notify_one();
                tracing::info!(job_id = %job_id, "command accepted");
                Ok(Step::Done(Disposition::Ack))
            }
            Err(AdmitError::Db(e)) => Err(e),
            Err(AdmitError::Reject(mut rej)) => {
                rej.command_id = Some(cmd.command_id);
                rej.organization_id = Some(cmd.organization_id);
                rej.correlation_id = cmd.correlation_id.clone();
                sqlx::query("UPDATE pf_commands SET outcome = 'rejected', reason_code = $2, job_id = NULL WHERE command_id = $1")
                    .bind(cmd.command_id.as_uuid())
                    .bind(rej.code.as_str())
                    .execute(&mut *tx)
                    .await?;
                outbox::enqueue(&mut tx, &rejected(&rej)).await?;
                tx.commit().await?;
                self.after_reject(&rej);
                Ok(Step::Done(Disposition::DeadLetter))
            }
        }
    }

    /// Record the rejection (once per readable command_id) and its event.
    async fn reject(&self, rej: &Rejection) -> Result<Step, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let first = match rej.command_id {
            Some(id) => sqlx::query(
                "INSERT INTO pf_commands (command_id, organization_id, kind, outcome, reason_code) \
                     VALUES ($1, $2, $3, 'rejected', $4) ON CONFLICT (command_id) DO NOTHING",
            )
            .bind(id.as_uuid())
            .bind(rej.organization_id.map(|o| o.as_uuid()))
            .bind(self.kind.as_str())
            .bind(rej.code.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1,
            None => true,
        };
        if first {
            outbox::enqueue(&mut tx, &rejected(rej)).await?;
        }
        tx.commit().await?;
        self.after_reject(rej);
        Ok(Step::Done(Disposition::DeadLetter))
    }

    fn after_reject(&self, rej: &Rejection) {
        self.metrics
            .commands_rejected
            .fetch_add(1, Ordering::Relaxed);
        self.outbox_wake.notify_one();
        tracing::info!(
            command_id = rej.command_id.map(|c| c.to_string()).unwrap_or_default(),
            reason = rej.code.as_str(),
            "command rejected"
        );
    }
}
