//! The poison lane: messages the workers must refuse without any effect — garbage bytes,
//! bad tokens, a routing key that lies, drills they must not run, a used command id with
//! other content — each recorded in the [`Ledger`](crate::workload::Ledger) so the audit
//! can check it was answered once and never became a job.

use std::sync::Arc;

use uuid::Uuid;

use drfleet_infra::auth::TokenMinter;
use drfleet_protocol::v1::{self, command_envelope::Command};

use crate::env::SOURCE_ALIAS_TARGET;
use crate::rng::Rng;
use crate::workload::{Ctx, Sent, backup_body, perms};

/// Poison: garbage bytes, bad tokens (wrong key, another organization, a missing permission),
/// a routing key that lies, drills a worker must refuse (naming the source database as
/// their target, or a record that does not exist), and a used command id with other content
/// (CONFLICT).
pub async fn poison_lane(ctx: Arc<Ctx>, orgs: Vec<Uuid>, mut rng: Rng) -> anyhow::Result<()> {
    let forged = TokenMinter::from_secret("not-the-workers-secret-0123456789abcdef")
        .expect("long enough secret");
    while !ctx.stop.is_cancelled() {
        let org = *rng.pick(&orgs).expect("tenants");
        // Another tenant's token (never the same one: that would be a valid command).
        let i = orgs.iter().position(|o| *o == org).unwrap_or(0);
        let other = orgs[(i + 1 + rng.range(0, orgs.len() as u64 - 2) as usize) % orgs.len()];
        let mut env = ctx.envelope(org, "backup", backup_body("poison"));
        let mut key = format!("backup.{org}");
        let mut body = None;
        let mut rejections = 1;
        match rng.range(0, 7) {
            0 => {
                let n = rng.range(1, 300) as usize;
                body = Some((0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>());
                rejections = 0; // no readable command id to hang the event on
            }
            1 => {
                env.actor_token = forged
                    .mint("intruder", org, &perms("backup"), 600)
                    .expect("mint")
            }
            2 => env.actor_token = ctx.token(other, &perms("backup")),
            3 => env.actor_token = ctx.token(org, &perms("verify")),
            // A backup envelope routed to the restore queue: refused (INVALID_ARGUMENT).
            4 => key = format!("restore.{org}"),
            // A drill into the source database (configured under another name):
            // INVALID_ARGUMENT, and nothing written there. A drill of a record nobody has:
            // NOT_FOUND.
            5 | 6 => {
                let to_source = rng.chance(50);
                let drill = v1::DrillCommand {
                    backup_record_id: Uuid::new_v4().to_string(),
                    selection: v1::DrillSelection::Record as i32,
                    target: if to_source {
                        SOURCE_ALIAS_TARGET.into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                env = ctx.envelope(org, "drill", Command::Drill(drill));
                key = format!("drill.{org}");
            }
            _ => {
                let reuse = { ctx.ledger.finished.lock().await.last().cloned() };
                match reuse {
                    Some((used, mut prior)) => {
                        // Same id, other content: CONFLICT, the recorded command untouched.
                        prior.correlation_id = format!("poison-{}", rng.next_u64());
                        prior.command = Some(backup_body("conflicting content"));
                        let o = Uuid::parse_str(&prior.organization_id)?;
                        prior.actor_token = ctx.token(o, &perms("backup"));
                        if let Some(s) = ctx.ledger.sent.lock().await.get_mut(&used) {
                            s.rejections_allowed += 1;
                        }
                        ctx.ledger
                            .poison_published
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        ctx.bus.publish(&prior).await?;
                        tokio::time::sleep(rng.millis(200, 1200)).await;
                        continue;
                    }
                    None => env.actor_token = "not.a.jwt".into(),
                }
            }
        }
        let id = Uuid::parse_str(&env.command_id)?;
        ctx.ledger.sent.lock().await.insert(
            id,
            Sent {
                kind: "poison",
                org,
                valid: false,
                copies: 1,
                rejections_allowed: rejections,
            },
        );
        ctx.ledger
            .poison_published
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = body.unwrap_or_else(|| prost::Message::encode_to_vec(&env));
        // Sometimes twice: a refused message delivered again causes no second event.
        let copies = if rng.chance(20) { 2 } else { 1 };
        for _ in 0..copies {
            ctx.bus.publish_raw(&key, &bytes, &env.command_id).await?;
        }
        tokio::select! {
            _ = ctx.stop.cancelled() => {}
            _ = tokio::time::sleep(rng.millis(200, 1200)) => {}
        }
    }
    Ok(())
}
