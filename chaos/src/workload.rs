//! The workload: one lane per tenant (manual backups, verifies, staging restores and
//! discards, promote cycles that check for torn promotions, DR drills, data changes), and
//! the policies whose seconds schedules make the scheduler publish backups, verifies, drills
//! and retention sweeps (the poison lane is [`crate::poison`]). Every command goes through
//! the shared building and publishing code (`drfleet_protocol::command::envelope`,
//! `drfleet_infra::amqp::publish_command`, `TokenMinter`), and is written to the [`Ledger`]
//! before it is published.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use drfleet_infra::auth::TokenMinter;
use drfleet_protocol::v1::{self, command_envelope::Command};

use crate::bus::Bus;
use crate::env::DRILL_TARGET;
use crate::rng::Rng;
use crate::tenants::{self, Ids, Tenant};

/// Events that end a command (their `causation_id` is the command id).
pub const TERMINAL: &[&str] = &[
    "backup_completed",
    "backup_failed",
    "restore_completed",
    "restore_failed",
    "verify_completed",
    "staging_discarded",
    "policy_updated",
    "policy_deleted",
    "policy_failed",
    "retention_completed",
    "retention_failed",
    "dr_drill_completed",
    "dr_drill_failed",
    "backup_hold_changed",
    "command_rejected",
];

/// Outcomes that mean the work was done (recovery after a fault = the next of these).
pub const SUCCESS: &[&str] = &[
    "backup_completed",
    "restore_completed",
    "verify_completed",
    "staging_discarded",
    "policy_updated",
    "retention_completed",
    "dr_drill_completed",
];

/// One command the harness published.
#[derive(Debug, Clone)]
pub struct Sent {
    pub kind: &'static str,
    pub org: Uuid,
    /// Expected to be accepted and to finish (poison is not).
    pub valid: bool,
    /// Copies published (duplicates, republishes after a cut).
    pub copies: u32,
    /// `command_rejected` events this id may carry (poison; a later CONFLICT reuse).
    pub rejections_allowed: u32,
}

/// A promotion whose tenant did not end up with either expected digest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Torn {
    pub organization_id: Uuid,
    pub command_id: Uuid,
    pub outcome: String,
}

#[derive(Default)]
pub struct Ledger {
    pub sent: Mutex<HashMap<Uuid, Sent>>,
    pub torn: Mutex<Vec<Torn>>,
    pub duplicates_published: std::sync::atomic::AtomicU64,
    pub poison_published: std::sync::atomic::AtomicU64,
    pub promotes: std::sync::atomic::AtomicU64,
    pub promotes_completed: std::sync::atomic::AtomicU64,
    /// Finished valid commands a poison message may reuse the id of (CONFLICT).
    pub finished: Mutex<Vec<(Uuid, v1::CommandEnvelope)>>,
}

pub struct Ctx {
    pub bus: Arc<Bus>,
    pub meta: PgPool,
    pub src: PgPool,
    pub minter: TokenMinter,
    pub ledger: Arc<Ledger>,
    pub ids: Arc<Ids>,
    /// Cancelled when the workload should stop starting new work.
    pub stop: CancellationToken,
    /// Cancelled when the settle deadline passes: nobody waits any longer.
    pub abandon: CancellationToken,
    pub wait_timeout: Duration,
}

/// What ended a command.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub event_type: String,
    pub payload: serde_json::Value,
}

pub(crate) fn perms(kind: &str) -> Vec<String> {
    let p: &[&str] = match kind {
        "backup" => &["pf.backup.create"],
        "promote" => &["pf.backup.restore", "pf.backup.promote"],
        "restore" | "discard" => &["pf.backup.restore"],
        "verify" => &["pf.backup.verify"],
        "policy" => &["pf.backup.policy"],
        "drill" => &["pf.dr-drill.run"],
        _ => &[],
    };
    p.iter().map(|s| s.to_string()).collect()
}

impl Ctx {
    pub fn envelope(&self, org: Uuid, perm_kind: &str, body: Command) -> v1::CommandEnvelope {
        let token = self.token(org, &perms(perm_kind));
        drfleet_protocol::command::envelope(org, body, &token, None, None)
    }

    pub fn token(&self, org: Uuid, perms: &[String]) -> String {
        self.minter
            .mint("drfleet-chaos", org, perms, 1800)
            .expect("HS256 minting of plain claims")
    }

    /// Record and publish `env`; sometimes publish it again (same id and content: the
    /// second copy must change nothing), immediately or with a fresh token a moment later.
    pub async fn send(
        &self,
        kind: &'static str,
        env: &v1::CommandEnvelope,
        rng: &mut Rng,
    ) -> anyhow::Result<Uuid> {
        let id = Uuid::parse_str(&env.command_id)?;
        let org = Uuid::parse_str(&env.organization_id)?;
        let dup = rng.chance(12);
        self.ledger.sent.lock().await.insert(
            id,
            Sent {
                kind,
                org,
                valid: true,
                copies: 1 + u32::from(dup),
                rejections_allowed: 0,
            },
        );
        self.bus.publish(env).await?;
        if dup {
            self.ledger
                .duplicates_published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut copy = env.clone();
            if rng.chance(50) {
                tokio::time::sleep(rng.millis(50, 400)).await;
                let perm_kind = if kind == "restore" && is_promote(env) {
                    "promote"
                } else {
                    kind
                };
                copy.actor_token = self.token(org, &perms(perm_kind));
            }
            self.bus.publish(&copy).await?;
        }
        Ok(id)
    }

    /// Wait for the command's terminal event (from the audit sink's table).
    pub async fn wait(&self, id: Uuid) -> Option<Outcome> {
        let deadline = tokio::time::Instant::now() + self.wait_timeout;
        let terminal: Vec<String> = TERMINAL.iter().map(|s| s.to_string()).collect();
        loop {
            let row: Result<Option<(String, serde_json::Value)>, _> = sqlx::query_as(
                "SELECT event_type, payload FROM pf_audit_events WHERE causation_id = $1 \
                 AND event_type = ANY($2) ORDER BY seq LIMIT 1",
            )
            .bind(id.to_string())
            .bind(&terminal)
            .fetch_optional(&self.meta)
            .await;
            if let Ok(Some((event_type, payload))) = row {
                return Some(Outcome {
                    event_type,
                    payload,
                });
            }
            if tokio::time::Instant::now() > deadline || self.abandon.is_cancelled() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn finished(&self, id: Uuid, env: v1::CommandEnvelope) {
        let mut f = self.ledger.finished.lock().await;
        if f.len() < 200 {
            f.push((id, env));
        }
    }

    /// Send, wait, and remember the command as reusable for a CONFLICT poison.
    async fn run(
        &self,
        kind: &'static str,
        env: v1::CommandEnvelope,
        rng: &mut Rng,
    ) -> anyhow::Result<Option<Outcome>> {
        let id = self.send(kind, &env, rng).await?;
        let out = self.wait(id).await;
        if out.is_some() {
            self.finished(id, env).await;
        }
        Ok(out)
    }
}

fn is_promote(env: &v1::CommandEnvelope) -> bool {
    matches!(&env.command, Some(Command::Restore(r)) if r.mode == v1::RestoreMode::Promote as i32)
}

pub fn backup_body(reason: &str) -> Command {
    Command::Backup(v1::BackupCommand {
        tier: "full".into(),
        policy_id: String::new(),
        reason: reason.into(),
        scheduled_for: None,
    })
}

fn restore_body(record: Uuid, mode: v1::RestoreMode) -> Command {
    Command::Restore(v1::RestoreCommand {
        backup_record_id: record.to_string(),
        mode: mode as i32,
        target: String::new(),
    })
}

/// A drill's body: LATEST, RANDOM_WITHIN_WINDOW or RECORD (of a completed backup the lane
/// knows), sometimes against the tenant's policy (its objectives and assertions, and its
/// backups to choose from), sometimes naming the target rather than relying on
/// DR_DRILL_TARGET, now and then keeping the scratch schema an hour.
fn drill_body(t: &Tenant, rng: &mut Rng) -> Command {
    let record = rng.pick(&t.backups).map(|(r, _)| *r);
    let (selection, record, window_days) = match (rng.range(0, 2), record) {
        (1, _) => (
            v1::DrillSelection::RandomWithinWindow,
            None,
            rng.range(1, 30) as u32,
        ),
        (2, Some(r)) => (v1::DrillSelection::Record, Some(r), 0),
        _ => (v1::DrillSelection::Latest, None, 0),
    };
    Command::Drill(v1::DrillCommand {
        backup_record_id: record.map(|r| r.to_string()).unwrap_or_default(),
        tier: if rng.chance(50) {
            "full".into()
        } else {
            String::new()
        },
        selection: selection as i32,
        window_days,
        target: if rng.chance(25) {
            DRILL_TARGET.into()
        } else {
            String::new()
        },
        keep_hours: u32::from(rng.chance(8)),
        policy_id: t
            .policy
            .filter(|_| rng.chance(50))
            .map(|p| p.to_string())
            .unwrap_or_default(),
        scheduled_for: None,
    })
}

pub fn discard_body(restore_job: Uuid) -> Command {
    Command::StagingDiscard(v1::StagingDiscardCommand {
        restore_job_id: restore_job.to_string(),
    })
}

fn payload_uuid(o: &Outcome, field: &str) -> Option<Uuid> {
    o.payload
        .get(field)?
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// One tenant's lane: sequential, so the harness alone decides when its rows change.
pub async fn lane(ctx: Arc<Ctx>, mut t: Tenant, mut rng: Rng) -> anyhow::Result<Tenant> {
    while !ctx.stop.is_cancelled() {
        let r = rng.range(0, 99);
        match r {
            0..=19 => {
                backup(&ctx, &mut t, &mut rng).await?;
            }
            20..=31 => match rng.pick(&t.backups).cloned() {
                Some((rec, _)) => {
                    let env = ctx.envelope(
                        t.org,
                        "verify",
                        Command::Verify(v1::VerifyCommand {
                            backup_record_id: rec.to_string(),
                        }),
                    );
                    ctx.run("verify", env, &mut rng).await?;
                }
                None => {
                    backup(&ctx, &mut t, &mut rng).await?;
                }
            },
            32..=43 => match rng.pick(&t.backups).cloned() {
                Some((rec, _)) => {
                    let env = ctx.envelope(
                        t.org,
                        "restore",
                        restore_body(rec, v1::RestoreMode::Staging),
                    );
                    if let Some(o) = ctx.run("restore", env, &mut rng).await?
                        && o.event_type == "restore_completed"
                        && let Some(job) = payload_uuid(&o, "restore_job_id")
                    {
                        t.kept_stagings.push(job);
                    }
                }
                None => {
                    backup(&ctx, &mut t, &mut rng).await?;
                }
            },
            44..=65 => promote_cycle(&ctx, &mut t, &mut rng).await?,
            66..=76 => {
                let env = ctx.envelope(t.org, "drill", drill_body(&t, &mut rng));
                ctx.run("drill", env, &mut rng).await?;
            }
            77..=88 if !t.kept_stagings.is_empty() => {
                let i = rng.range(0, t.kept_stagings.len() as u64 - 1) as usize;
                let job = t.kept_stagings.swap_remove(i);
                let env = ctx.envelope(t.org, "discard", discard_body(job));
                ctx.run("discard", env, &mut rng).await?;
            }
            _ => change(&ctx, &mut t).await?,
        }
        tokio::select! {
            _ = ctx.stop.cancelled() => {}
            _ = tokio::time::sleep(rng.millis(100, 900)) => {}
        }
    }
    Ok(t)
}

/// Change the tenant's rows: its next version.
async fn change(ctx: &Ctx, t: &mut Tenant) -> anyhow::Result<()> {
    t.version += 1;
    tenants::mutate(&ctx.src, &ctx.ids, t.org, t.version).await?;
    t.expected = tenants::digest(&ctx.src, t.org).await?;
    t.alternative = None;
    Ok(())
}

/// A manual backup; a completed one is remembered with the digest of the rows it holds
/// (nothing changed them while it ran).
async fn backup(ctx: &Ctx, t: &mut Tenant, rng: &mut Rng) -> anyhow::Result<Option<Uuid>> {
    let env = ctx.envelope(t.org, "backup", backup_body("chaos"));
    let out = ctx.run("backup", env, rng).await?;
    let rec = out
        .filter(|o| o.event_type == "backup_completed")
        .and_then(|o| payload_uuid(&o, "backup_record_id"));
    if let Some(rec) = rec
        && t.alternative.is_none()
    {
        t.backups.push((rec, t.expected.clone()));
        if t.backups.len() > 12 {
            t.backups.remove(0);
        }
    }
    Ok(rec)
}

/// Version k → backup B_k (digest D_k) → change to k+1 (D_k+1) → PROMOTE B_k. Once it has
/// finished the rows must be exactly D_k (completed) or exactly D_k+1 (failed or refused);
/// anything else is a torn promotion.
async fn promote_cycle(ctx: &Ctx, t: &mut Tenant, rng: &mut Rng) -> anyhow::Result<()> {
    if t.alternative.is_some() {
        return change(ctx, t).await;
    }
    let Some(rec) = backup(ctx, t, rng).await? else {
        return Ok(());
    };
    let d_k = t.expected.clone();
    change(ctx, t).await?;
    let d_next = t.expected.clone();
    let env = ctx.envelope(
        t.org,
        "promote",
        restore_body(rec, v1::RestoreMode::Promote),
    );
    ctx.ledger
        .promotes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = Uuid::parse_str(&env.command_id)?;
    let out = ctx.run("restore", env, rng).await?;
    let now = tenants::digest(&ctx.src, t.org).await?;
    let outcome = out
        .as_ref()
        .map_or("unfinished".to_string(), |o| o.event_type.clone());
    match out.as_ref().map(|o| o.event_type.as_str()) {
        Some("restore_completed") => {
            ctx.ledger
                .promotes_completed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.expected = d_k.clone();
            // The promoted rows are version k's again; a backup of them holds D_k.
            if now != d_k {
                ctx.ledger.torn.lock().await.push(Torn {
                    organization_id: t.org,
                    command_id: id,
                    outcome,
                });
            }
        }
        Some(_) => {
            if now != d_next {
                ctx.ledger.torn.lock().await.push(Torn {
                    organization_id: t.org,
                    command_id: id,
                    outcome,
                });
            }
        }
        None => {
            // Not finished in time (the audit counts it lost); either digest stays acceptable.
            t.alternative = Some(d_k);
        }
    }
    Ok(())
}

/// Give a third of the tenants a policy: backups every 10 s, keep the last 3, verify every
/// retained backup each minute; every other one also a drill every 20 s, with objectives and
/// assertions on its scratch copy (one of them fails once the tenant's rows have changed, so
/// drills that do not pass come up too). The scheduler then publishes backups, verifies,
/// drills and retention sweeps on its own. Returns each policy's (organization, id).
pub async fn policies(
    ctx: &Ctx,
    orgs: &[Uuid],
    rng: &mut Rng,
) -> anyhow::Result<Vec<(Uuid, Uuid)>> {
    let assertion = |name: &str, sql: &str| v1::DrillAssertion {
        name: name.into(),
        sql: sql.into(),
    };
    for (i, org) in orgs.iter().step_by(3).enumerate() {
        let offset = rng.range(0, 9);
        let drills = i % 2 == 0;
        let mut assertions = Vec::new();
        if drills {
            assertions.push(assertion(
                "lines_have_orders",
                "SELECT l.order_id FROM order_lines l LEFT JOIN orders o ON o.id = l.order_id WHERE o.id IS NULL",
            ));
            assertions.push(assertion(
                "positive_quantities",
                "SELECT 1 FROM order_lines WHERE qty <= 0",
            ));
            if i % 4 == 2 {
                assertions.push(assertion(
                    "never_changed",
                    "SELECT id FROM customers WHERE doc->>'added' IS NOT NULL",
                ));
            }
        }
        let env = ctx.envelope(
            *org,
            "policy",
            Command::Policy(v1::PolicyCommand {
                name: "chaos".into(),
                action: v1::PolicyAction::Upsert as i32,
                spec: Some(v1::PolicySpec {
                    tier: "full".into(),
                    schedule: format!("{offset}/10 * * * * *"),
                    timezone: String::new(),
                    rpo_seconds: if drills { 3600 } else { 0 },
                    rto_seconds: if drills { 600 } else { 0 },
                    retention: Some(v1::RetentionRules {
                        keep_last: 3,
                        ..Default::default()
                    }),
                    verify_cycle_seconds: 60,
                    drill_schedule: if drills {
                        format!("{}/20 * * * * *", rng.range(0, 19))
                    } else {
                        String::new()
                    },
                    disabled: false,
                    drill_assertions: assertions,
                }),
            }),
        );
        ctx.run("policy", env, rng).await?;
    }
    let ids: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT organization_id, id FROM pf_backup_policies WHERE enabled")
            .fetch_all(&ctx.meta)
            .await?;
    Ok(ids)
}
