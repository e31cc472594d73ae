//! Command intake: one delivery in, one durable outcome out.
//!
//! decode + validate (routing key included) → authenticate + authorize → (in one
//! transaction) dedup, role admission checks, job row or rejection event → commit → ack, or
//! dead-letter a redacted copy ([`crate::deadletter`]) and ack once it is confirmed.
//! A delivery is settled only after its outcome is committed.
//!
//! Dedup, so that nobody can squat a command_id:
//! - `pf_commands` holds only authenticated and authorized commands, with a fingerprint of
//!   their content (sha256 of [`ValidCommand::content_bytes`]). Its primary key serializes two
//!   deliveries of one id: the second waits for the first's transaction, then finds its row.
//!   Same fingerprint: a duplicate (ack, or dead-letter again if it was refused; no event).
//!   Another fingerprint: CONFLICT.
//! - Every other refusal (malformed, invalid, unauthenticated, forbidden, and the CONFLICT
//!   of a reused id) is recorded in `pf_rejected_messages` under the message's digest,
//!   sha256(routing key, 0, body): a redelivery causes no second event, and the command_id
//!   stays free for the authentic command.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use drfleet_infra::Retry;
use drfleet_infra::amqp::{AmqpError, ConfirmPublisher};
use drfleet_infra::auth::{Actor, AuthError, TokenVerifier, authorize};
use drfleet_infra::trace_context::{TraceContext, continue_from};
use drfleet_protocol::JobId;
use drfleet_protocol::auth::required_permissions;
use drfleet_protocol::events::rejected;
use drfleet_protocol::topology::{CONTENT_TYPE, CommandKind, DELIVERY_LIMIT};
use drfleet_protocol::validate::{
    ReasonCode, Rejection, ValidCommand, check_routing_key, decode_command,
};

use crate::deadletter;
use crate::handler::{AdmitError, Job, JobHandler};
use crate::metrics::Metrics;
use crate::outbox;

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Outcome committed (job recorded, or a duplicate).
    Ack,
    /// Refused (its `command_rejected` committed, unless it is a redelivery), or past the
    /// delivery limit: a redacted copy goes to the dead-letter exchange, with this reason.
    DeadLetter(&'static str),
    /// Could not be processed now (shutdown during a retry); back to the queue.
    Requeue,
}

/// Why a delivery could not be settled; it will be redelivered.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("broker error while settling")]
    Broker(#[from] lapin::Error),
    #[error("dead-lettering failed: {0}")]
    DeadLetter(#[source] AmqpError),
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

/// What the checks that need no database found.
enum Checked {
    Valid(ValidCommand, Actor),
    /// Refused; `cmd` is set when the command was well-formed but its token or permissions
    /// failed (a redelivery of an accepted command whose token has expired since looks so).
    Refused(Rejection, Option<ValidCommand>),
}

/// sha256 of what a command asks for: the `pf_commands.fingerprint`.
pub fn fingerprint(cmd: &ValidCommand) -> Vec<u8> {
    Sha256::digest(cmd.content_bytes()).to_vec()
}

/// sha256(routing key, 0, body): the `pf_rejected_messages` key.
pub fn message_digest(routing_key: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(routing_key.as_bytes());
    h.update([0u8]);
    h.update(body);
    h.finalize().to_vec()
}

/// Failed deliveries after which the intake dead-letters a message itself: RabbitMQ (3.10)
/// dead-letters a quorum queue's message when its `x-delivery-count` reaches
/// `x-delivery-limit`, verbatim (token and all), so the delivery that arrives with count
/// limit − 1 is the last one drfleet sees.
pub const DELIVERY_LIMIT_SELF: i64 = DELIVERY_LIMIT - 1;

impl Intake {
    /// Process and settle one delivery; `dead_letters` is a confirm channel of the same
    /// connection.
    pub async fn handle(
        &self,
        delivery: Delivery,
        dead_letters: &ConfirmPublisher,
        shutdown: &CancellationToken,
    ) -> Result<Disposition, SettleError> {
        // The deliberately broken intake (a test-only switch; inert without the feature).
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str());
        if let Some(drop) = crate::faults::ack_before_durable(message_id.unwrap_or_default()) {
            delivery.ack(BasicAckOptions::default()).await?;
            if drop {
                return Ok(Disposition::Ack);
            }
            let disposition = self.process(&delivery, shutdown).await;
            if let Disposition::DeadLetter(reason) = disposition {
                let _ =
                    deadletter::publish(dead_letters, &delivery, self.kind.queue(), reason).await;
            }
            return Ok(disposition);
        }
        // The sender's trace (drctl, the scheduler, any upstream service) continues here; the
        // job row keeps this span's context for whichever worker runs the job.
        let span = tracing::info_span!("command.intake", kind = self.kind.as_str());
        continue_from(
            TraceContext::from_headers(delivery.properties.headers().as_ref()).as_ref(),
            &span,
        );
        let disposition = self
            .process(&delivery, shutdown)
            .instrument(span.clone())
            .await;
        match disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await?,
            Disposition::DeadLetter(reason) => {
                if let Err(e) =
                    deadletter::publish(dead_letters, &delivery, self.kind.queue(), reason).await
                {
                    // Back to the queue; the retry finds its rejection recorded and sends
                    // no second event.
                    let _ = delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                    return Err(SettleError::DeadLetter(e));
                }
                delivery.ack(BasicAckOptions::default()).await?
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
        // A message that failed this many deliveries (it crashed workers, or kept failing) is
        // not tried again: looking at it might crash this worker too.
        if delivery_count(delivery) >= DELIVERY_LIMIT_SELF {
            // The message id is the sender's text: logged only when it is a command id.
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|m| m.as_str().parse::<drfleet_protocol::CommandId>().ok());
            tracing::warn!(
                queue = self.kind.queue(),
                message_id = message_id.map(|m| m.to_string()).unwrap_or_default(),
                "command reached the delivery limit; dead-lettering it"
            );
            return Disposition::DeadLetter(deadletter::REASON_DELIVERY_LIMIT);
        }
        let checked = self.check(delivery);
        let digest = message_digest(delivery.routing_key.as_str(), &delivery.data);
        // Database work retries transient errors (a restarting PostgreSQL) for a while, so a
        // short outage neither loses the command nor burns its delivery limit.
        let mut delay = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let res = match &checked {
                Checked::Valid(cmd, actor) => self.accept(cmd, actor, &digest).await,
                Checked::Refused(rej, cmd) => self.reject(rej, cmd.as_ref(), &digest).await,
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

    /// Everything that needs no database: decoding, validation, routing key, token,
    /// permissions.
    fn check(&self, delivery: &Delivery) -> Checked {
        if let Some(ct) = delivery.properties.content_type()
            && ct.as_str() != CONTENT_TYPE
        {
            return Checked::Refused(
                Rejection::new(
                    ReasonCode::Malformed,
                    "content_type must be application/x-protobuf",
                ),
                None,
            );
        }
        let cmd = match decode_command(&delivery.data, Some(self.kind))
            .and_then(|c| check_routing_key(delivery.routing_key.as_str(), &c).map(|_| c))
        {
            Ok(c) => c,
            Err(r) => return Checked::Refused(r, None),
        };
        let ctx = |code, msg: &str| {
            let mut r = Rejection::new(code, msg);
            r.command_id = Some(cmd.command_id);
            // Not authenticated: the key is echoed only when plain (see validate_envelope).
            r.tenant_key = Some(cmd.tenant_key.clone()).filter(|k| k.is_plain());
            r.organization_id = r.tenant_key.as_ref().map(|k| k.organization_id());
            r.correlation_id = cmd.correlation_id.clone();
            r
        };
        let actor = match self.verifier.verify(&cmd.actor_token) {
            Ok(a) => a,
            Err(e) => {
                let r = ctx(ReasonCode::Unauthenticated, &e.to_string());
                return Checked::Refused(r, Some(cmd));
            }
        };
        if let Err(e) = authorize(
            &actor,
            &cmd.organization_id,
            required_permissions(&cmd.body),
        ) {
            let r = match e {
                AuthError::Unauthenticated(_) => ctx(ReasonCode::Unauthenticated, &e.to_string()),
                AuthError::Forbidden(_) => ctx(ReasonCode::Forbidden, &e.to_string()),
            };
            return Checked::Refused(r, Some(cmd));
        }
        Checked::Valid(cmd, actor)
    }

    #[tracing::instrument(skip_all, fields(command_id = %cmd.command_id, org = %cmd.organization_id, kind = self.kind.as_str()), err)]
    async fn accept(
        &self,
        cmd: &ValidCommand,
        actor: &Actor,
        digest: &[u8],
    ) -> Result<Step, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let job_id = JobId::new();
        let fp = fingerprint(cmd);
        let fresh = sqlx::query(
            "INSERT INTO pf_commands (command_id, organization_id, kind, outcome, job_id, fingerprint) \
             VALUES ($1, $2, $3, 'accepted', $4, $5) ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(cmd.command_id.as_uuid())
        .bind(cmd.organization_id.as_uuid())
        .bind(self.kind.as_str())
        .bind(job_id.as_uuid())
        .bind(&fp)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            if let Some(d) = self.duplicate_of(&mut tx, cmd, &fp).await? {
                tx.rollback().await?;
                return Ok(Step::Done(d));
            }
            // The id is taken by a command asking for something else: refused loudly, and
            // without touching the recorded one.
            let rej = Rejection::new(
                ReasonCode::Conflict,
                "command_id was already used by a different command",
            );
            let rej = rej.about(cmd);
            let first = self.record_rejection(&mut tx, &rej, digest).await?;
            tx.commit().await?;
            if first {
                self.after_reject(&rej);
            }
            return Ok(Step::Done(Disposition::DeadLetter(rej.code.as_str())));
        }
        match self.handler.admit(&mut tx, cmd, actor).await {
            Ok(adm) => {
                let job = Job {
                    id: job_id,
                    kind: self.kind,
                    organization_id: cmd.organization_id,
                    tenant_key: cmd.tenant_key.clone(),
                    command_id: cmd.command_id,
                    correlation_id: cmd.correlation_id.clone(),
                    actor: actor.sub.clone(),
                    spec: cmd.body.clone(),
                    attempt: 0,
                    max_attempts: self.max_attempts,
                    trace: TraceContext::current(),
                };
                crate::jobs::insert(&mut tx, &job, &adm.concurrency_key).await?;
                tx.commit().await?;
                self.metrics.command_accepted(self.kind);
                self.job_wake.notify_one();
                tracing::info!(job_id = %job_id, "command accepted");
                Ok(Step::Done(Disposition::Ack))
            }
            Err(AdmitError::Db(e)) => Err(e),
            Err(AdmitError::Reject(mut rej)) => {
                // An authenticated command refused by admission keeps its id: a redelivery
                // is a duplicate of this refusal.
                rej = rej.about(cmd);
                sqlx::query("UPDATE pf_commands SET outcome = 'rejected', reason_code = $2, job_id = NULL WHERE command_id = $1")
                    .bind(cmd.command_id.as_uuid())
                    .bind(rej.code.as_str())
                    .execute(&mut *tx)
                    .await?;
                outbox::enqueue(&mut tx, &rejected(&rej)).await?;
                tx.commit().await?;
                self.after_reject(&rej);
                Ok(Step::Done(Disposition::DeadLetter(rej.code.as_str())))
            }
        }
    }

    /// If `cmd` (same id, same content) was recorded before, how to settle this copy: ack a
    /// duplicate of an accepted command, dead-letter again one of a refused command; no
    /// event either way. `None` when the id is recorded with other content.
    async fn duplicate_of(
        &self,
        tx: &mut PgConnection,
        cmd: &ValidCommand,
        fp: &[u8],
    ) -> Result<Option<Disposition>, sqlx::Error> {
        let row: Option<(String, Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT outcome, reason_code, fingerprint FROM pf_commands WHERE command_id = $1",
        )
        .bind(cmd.command_id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((outcome, reason, recorded)) = row else {
            return Ok(None);
        };
        // Rows from before fingerprints existed: the id was accepted, content unknown.
        if recorded.as_deref().is_some_and(|r| r != fp) {
            return Ok(None);
        }
        self.metrics.command_duplicate(self.kind);
        tracing::info!(
            command_id = %cmd.command_id,
            outcome = outcome.as_str(),
            "duplicate command; already recorded"
        );
        Ok(Some(if outcome == "accepted" {
            Disposition::Ack
        } else {
            Disposition::DeadLetter(
                reason
                    .as_deref()
                    .and_then(ReasonCode::parse)
                    .unwrap_or(ReasonCode::Conflict)
                    .as_str(),
            )
        }))
    }

    /// Record a refusal that does not own its command_id, and its event unless this message
    /// was refused before.
    async fn record_rejection(
        &self,
        tx: &mut PgConnection,
        rej: &Rejection,
        digest: &[u8],
    ) -> Result<bool, sqlx::Error> {
        let first = sqlx::query(
            "INSERT INTO pf_rejected_messages (digest, command_id, organization_id, kind, reason_code) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(rej.command_id.map(|c| c.as_uuid()))
        .bind(rej.organization_id.map(|o| o.as_uuid()))
        .bind(self.kind.as_str())
        .bind(rej.code.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if first {
            outbox::enqueue(tx, &rejected(rej)).await?;
        }
        Ok(first)
    }

    /// A message refused before it was authenticated and authorized.
    async fn reject(
        &self,
        rej: &Rejection,
        cmd: Option<&ValidCommand>,
        digest: &[u8],
    ) -> Result<Step, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The same content under this id was authenticated before: this copy (its token
        // expired since, or a replay) can change nothing, so it is a duplicate, not news.
        if let Some(cmd) = cmd
            && let Some(d) = self.duplicate_of(&mut tx, cmd, &fingerprint(cmd)).await?
        {
            tx.rollback().await?;
            return Ok(Step::Done(d));
        }
        let first = self.record_rejection(&mut tx, rej, digest).await?;
        tx.commit().await?;
        if first {
            self.after_reject(rej);
        }
        Ok(Step::Done(Disposition::DeadLetter(rej.code.as_str())))
    }

    fn after_reject(&self, rej: &Rejection) {
        self.metrics.command_rejected(self.kind, rej.code.as_str());
        self.outbox_wake.notify_one();
        tracing::info!(
            command_id = rej.command_id.map(|c| c.to_string()).unwrap_or_default(),
            reason = rej.code.as_str(),
            "command rejected"
        );
    }
}

/// How many times this message was delivered and returned before (quorum queues' header).
fn delivery_count(delivery: &Delivery) -> i64 {
    use lapin::types::AMQPValue as V;
    let Some(headers) = delivery.properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(V::LongLongInt(n)) => *n,
        Some(V::LongInt(n)) => i64::from(*n),
        Some(V::ShortInt(n)) => i64::from(*n),
        Some(V::LongUInt(n)) => i64::from(*n),
        Some(V::ShortUInt(n)) => i64::from(*n),
        Some(V::ShortShortInt(n)) => i64::from(*n),
        Some(V::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    }
}
