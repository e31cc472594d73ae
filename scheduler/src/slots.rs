//! Recording slots and queueing their commands, in the caller's transaction: what every
//! kind of scheduled command (backup, verify, retention) does the same way.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use drfleet_infra::trace_context::TraceContext;
use drfleet_protocol::v1::CommandEnvelope;
use drfleet_runtime::outbox;

/// Slots of one kind and their commands, recorded and queued in one statement each.
#[derive(Default)]
pub struct SlotRows {
    commands: Vec<CommandEnvelope>,
    command_ids: Vec<uuid::Uuid>,
    policy_ids: Vec<uuid::Uuid>,
    orgs: Vec<uuid::Uuid>,
    slots: Vec<DateTime<Utc>>,
    backups: Vec<Option<uuid::Uuid>>,
}

impl SlotRows {
    /// The slot `slot` of `policy_id` (about `backup`, for verify slots) and its command.
    pub fn push(
        &mut self,
        command: CommandEnvelope,
        policy_id: uuid::Uuid,
        org: uuid::Uuid,
        slot: DateTime<Utc>,
        backup: Option<uuid::Uuid>,
    ) {
        self.command_ids.push(
            command
                .command_id
                .parse()
                .expect("a scheduled command id is a UUID"),
        );
        self.commands.push(command);
        self.policy_ids.push(policy_id);
        self.orgs.push(org);
        self.slots.push(slot);
        self.backups.push(backup);
    }

    /// Record the slots (`kind`) and queue the commands of those not recorded before: a slot
    /// is published once, whatever the number of schedulers. Returns how many were queued.
    pub async fn publish(self, tx: &mut PgConnection, kind: &str) -> Result<u64, sqlx::Error> {
        if self.command_ids.is_empty() {
            return Ok(0);
        }
        let fresh: HashSet<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO pf_schedule_slots \
               (command_id, policy_id, kind, slot_at, organization_id, backup_record_id) \
             SELECT c, p, $6, s, o, b \
               FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::uuid[], $5::uuid[]) \
                 AS x(c, p, s, o, b) \
             ON CONFLICT DO NOTHING RETURNING command_id",
        )
        .bind(&self.command_ids)
        .bind(&self.policy_ids)
        .bind(&self.slots)
        .bind(&self.orgs)
        .bind(&self.backups)
        .bind(kind)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let queued: Vec<(CommandEnvelope, Option<TraceContext>)> = self
            .commands
            .into_iter()
            .zip(&self.command_ids)
            .filter(|(_, id)| fresh.contains(id))
            .map(|(c, id)| {
                let trace = start_trace(kind, id);
                (c, trace)
            })
            .collect();
        outbox::enqueue_commands(tx, &queued).await
    }
}

/// A new trace for one scheduled command (its root span, `scheduler.publish`); the outbox
/// row keeps its context and the relay sends it with the command. Only when traces are
/// exported: 10,000 due slots cost no spans otherwise.
fn start_trace(kind: &str, command_id: &uuid::Uuid) -> Option<TraceContext> {
    if !drfleet_infra::telemetry::exporting() {
        return None;
    }
    let span =
        tracing::info_span!(parent: None, "scheduler.publish", kind, command_id = %command_id);
    TraceContext::of(&span)
}
