//! `drctl backup|restore|verify|drill|policy set|policy rm`: build a command, validate it, publish it with
//! confirms, then follow its events until a terminal one.
//!
//! The event queue is declared and bound *before* the command is published, so no event the
//! command causes can be missed. It is exclusive and auto-delete, bound to `dr.events` with
//! `*.<org>` and `command_rejected.unknown` (rejections whose organization was unreadable).

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use prost::Message;
use tracing::Instrument as _;

use drfleet_infra::amqp::{ConfirmPublisher, connect, declare_topology, publish_command};
use drfleet_infra::config::{ConfigError, amqp_url};
use drfleet_protocol::BackupRecordId;
use drfleet_protocol::auth::required_permissions;
use drfleet_protocol::events::event_type;
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::topology::command_routing_key;
use drfleet_protocol::topology::{COMMANDS_EXCHANGE, CommandKind, EVENTS_EXCHANGE, UNKNOWN_ORG};
use drfleet_protocol::v1::command_envelope::Command;
use drfleet_protocol::v1::event_envelope::Event;
use drfleet_protocol::v1::{self, CommandEnvelope, EventEnvelope};
use drfleet_protocol::validate::{ValidCommand, validate_envelope};

use crate::cli::{
    BackupArgs, CommandOpts, DbArgs, DiscardArgs, HoldArgs, ModeArg, ReleaseArgs, RestoreArgs,
    VerifyArgs,
};
use crate::error::{Error, Outcome};
use crate::notice;
use crate::output::{event_line, print_line};
use crate::progress::Follower;
use crate::token;

/// Shortest lifetime of a minted token: the command may wait in its queue for a while.
const MIN_MINTED_TTL: u64 = 3600;

/// The oneof body of each subcommand.
pub fn backup_body(a: &BackupArgs) -> Command {
    Command::Backup(v1::BackupCommand {
        tier: a.tier.clone(),
        policy_id: a.policy_id.clone(),
        reason: a.reason.clone(),
        scheduled_for: None,
    })
}

/// `backup` is required by the command line whenever no `restore` subcommand is given.
pub fn restore_body(a: &RestoreArgs, backup: &BackupRecordId) -> Command {
    let mode = match a.mode {
        ModeArg::Staging => v1::RestoreMode::Staging,
        ModeArg::Promote => v1::RestoreMode::Promote,
    };
    Command::Restore(v1::RestoreCommand {
        backup_record_id: backup.to_string(),
        mode: mode as i32,
        target: a.target.clone().unwrap_or_default(),
    })
}

pub fn discard_body(a: &DiscardArgs) -> Command {
    Command::StagingDiscard(v1::StagingDiscardCommand {
        restore_job_id: a.job.to_string(),
    })
}

pub fn verify_body(a: &VerifyArgs) -> Command {
    Command::Verify(v1::VerifyCommand {
        backup_record_id: a.backup.to_string(),
    })
}

pub fn hold_body(a: &HoldArgs) -> Command {
    Command::BackupHold(v1::BackupHoldCommand {
        backup_record_id: a.record.to_string(),
        hold: true,
        reason: a.reason.clone(),
    })
}

pub fn release_body(a: &ReleaseArgs) -> Command {
    Command::BackupHold(v1::BackupHoldCommand {
        backup_record_id: a.record.to_string(),
        hold: false,
        reason: String::new(),
    })
}

/// A fresh envelope (UUIDv7 command id; correlation id given or a fresh UUID) without token.
pub fn new_envelope(
    org: &TenantKey,
    correlation_id: Option<&str>,
    command: Command,
) -> CommandEnvelope {
    drfleet_protocol::command::envelope(org, command, "", correlation_id, None)
}

/// Validate the envelope, attach the actor token (given, or minted with exactly the
/// permissions the validated command needs) and validate the result.
pub fn prepare(
    opts: &CommandOpts,
    mut env: CommandEnvelope,
) -> Result<(CommandEnvelope, ValidCommand), Error> {
    let draft = validate_envelope(env.clone(), None).map_err(Error::InvalidCommand)?;
    env.actor_token = match opts.token.as_deref() {
        Some(t) if !t.is_empty() => t.to_string(),
        _ if token::can_mint(&opts.secret) => {
            let perms: Vec<String> = required_permissions(&draft.body)
                .iter()
                .map(|p| p.to_string())
                .collect();
            let ttl = MIN_MINTED_TTL.max(opts.wait_secs.saturating_add(300));
            token::mint(&opts.secret, &opts.sub, &draft.tenant_key, &perms, ttl)?
        }
        _ => {
            return Err(ConfigError::new(
                "DR_ACTOR_TOKEN",
                "is required (or DR_AUTH_JWT_SECRET or DR_AUTH_JWT_PRIVATE_KEY to mint one)",
            )
            .into());
        }
    };
    let valid =
        validate_envelope(env.clone(), Some(draft.body.kind())).map_err(Error::InvalidCommand)?;
    Ok((env, valid))
}

/// Whether an event answers our command: same correlation id, and caused by our command
/// (or by nothing readable, as a rejection of an unreadable command may be).
pub fn belongs_to(ev: &EventEnvelope, cmd: &ValidCommand) -> bool {
    ev.correlation_id == cmd.correlation_id
        && (ev.causation_id.is_empty() || ev.causation_id == cmd.command_id.to_string())
}

/// The outcome an event settles for a command of `kind`, if it is terminal.
pub fn terminal(kind: CommandKind, event: &Event) -> Option<Outcome> {
    let done = |ok: bool| {
        Some(if ok {
            Outcome::Success
        } else {
            Outcome::Failed
        })
    };
    match (kind, event) {
        (_, Event::CommandRejected(_)) => done(false),
        (CommandKind::Backup, Event::BackupCompleted(_)) => done(true),
        (CommandKind::Backup, Event::BackupFailed(_)) => done(false),
        (CommandKind::Restore, Event::RestoreCompleted(_)) => done(true),
        (CommandKind::Restore, Event::RestoreFailed(_)) => done(false),
        // A staging discard is a `restore`-kind command.
        (CommandKind::Restore, Event::StagingDiscarded(_)) => done(true),
        (CommandKind::Verify, Event::VerifyCompleted(v)) => done(v.ok),
        (CommandKind::Drill, Event::DrDrillCompleted(d)) => done(d.passed),
        (CommandKind::Drill, Event::DrDrillFailed(_)) => done(false),
        (CommandKind::Policy, Event::PolicyUpdated(_) | Event::PolicyDeleted(_)) => done(true),
        (CommandKind::Policy, Event::PolicyFailed(_)) => done(false),
        (CommandKind::Retention, Event::RetentionCompleted(_)) => done(true),
        (CommandKind::Retention, Event::BackupHoldChanged(_)) => done(true),
        (CommandKind::Retention, Event::RetentionFailed(_)) => done(false),
        (
            CommandKind::Keys,
            Event::MasterKeyRotated(_)
            | Event::TenantKeyRotated(_)
            | Event::TenantShredRequested(_)
            | Event::TenantShredded(_),
        ) => done(true),
        (CommandKind::Keys, Event::KeysFailed(_)) => done(false),
        _ => None,
    }
}

/// Binding keys of the wait queue for `org` (its routing-key segment).
pub fn wait_bindings(org: &TenantKey) -> [String; 2] {
    [
        format!("*.{}", org.routing_segment()),
        format!("command_rejected.{UNKNOWN_ORG}"),
    ]
}

/// An exclusive, auto-delete queue on `dr.events` bound with `keys`, consumed without acks.
pub async fn event_consumer(ch: &Channel, keys: &[String], tag: &str) -> Result<Consumer, Error> {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in keys {
        ch.queue_bind(
            q.name().clone(),
            EVENTS_EXCHANGE.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(ch
        .basic_consume(
            q.name().clone(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// Connect and declare the topology (idempotent). Says on stderr which broker and vhost.
pub async fn open(amqp: &str) -> Result<(Connection, Channel), Error> {
    let url = amqp_url("DR_AMQP_URL", amqp)?;
    if let Some(target) = notice::broker_target(&url) {
        eprintln!("drctl: broker {target}");
    }
    let conn = connect(&url, "drctl").await?;
    let ch = conn.create_channel().await?;
    declare_topology(&ch).await?;
    Ok((conn, ch))
}

/// How a waiting command shows its events on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Every event of the command, one JSON line each.
    Events,
    /// A drill's pass/fail matrix ([`crate::drill::matrix`]) for `dr_drill_completed`; any
    /// other outcome (a rejection, `dr_drill_failed`) as its JSON line.
    DrillMatrix,
}

/// Build, validate, publish and (unless `--no-wait`) follow one command. The command starts
/// a trace (`drctl.command`, open until the outcome arrives) when traces are exported.
pub async fn run(org: &TenantKey, body: Command, opts: &CommandOpts) -> Result<Outcome, Error> {
    run_with(org, body, opts, Show::Events, None).await
}

/// [`run`], showing the events as `show` says and, when `db` names the metadata database,
/// the job's progress while waiting ([`crate::progress`]).
pub async fn run_with(
    org: &TenantKey,
    body: Command,
    opts: &CommandOpts,
    show: Show,
    db: Option<&DbArgs>,
) -> Result<Outcome, Error> {
    // A restore or drill of a known backup loads its rows: the display can show a bar.
    let rows_of = match &body {
        Command::Restore(r) => r.backup_record_id.parse::<uuid::Uuid>().ok(),
        Command::Drill(d) => d.backup_record_id.parse::<uuid::Uuid>().ok(),
        _ => None,
    };
    let env = new_envelope(org, opts.correlation_id.as_deref(), body);
    let (env, cmd) = prepare(opts, env)?;
    let span = tracing::info_span!(
        parent: None,
        "drctl.command",
        kind = cmd.body.kind().as_str(),
        command_id = %cmd.command_id,
    );
    let follow = Follow { show, db, rows_of };
    publish_and_follow(env, cmd, opts, follow)
        .instrument(span)
        .await
}

/// How [`publish_and_follow`] shows what it waits for.
struct Follow<'a> {
    show: Show,
    db: Option<&'a DbArgs>,
    rows_of: Option<uuid::Uuid>,
}

async fn publish_and_follow(
    env: CommandEnvelope,
    cmd: ValidCommand,
    opts: &CommandOpts,
    follow: Follow<'_>,
) -> Result<Outcome, Error> {
    let Follow { show, db, rows_of } = follow;
    let kind = cmd.body.kind();
    let routing_key = command_routing_key(kind, &cmd.tenant_key);

    let (conn, ch) = open(&opts.broker.amqp_url).await?;
    let consumer = if opts.no_wait {
        None
    } else {
        Some(event_consumer(&ch, &wait_bindings(&cmd.tenant_key), "drctl-wait").await?)
    };
    let publisher = ConfirmPublisher::new(&conn).await?;
    let command_id = cmd.command_id.to_string();
    publish_command(&publisher, &env).await?;
    eprintln!(
        "drctl: published {} command {command_id} (correlation {}) to {COMMANDS_EXCHANGE} with key {routing_key}",
        kind.as_str(),
        cmd.correlation_id
    );
    notice::warn_if_unconsumed(&conn, kind).await;

    let outcome = match consumer {
        None => {
            print_line(&serde_json::json!({
                "command_id": command_id,
                "correlation_id": cmd.correlation_id,
                "routing_key": routing_key,
            }))?;
            Ok(Outcome::Success)
        }
        Some(consumer) => {
            let follower = match db {
                Some(db) => Follower::start(db, cmd.command_id, rows_of).await,
                None => None,
            };
            let limit = Duration::from_secs(opts.wait_secs);
            let outcome = wait_showing(consumer, &cmd, limit, show, follower.as_ref()).await;
            if let Some(f) = follower {
                f.finish().await;
            }
            outcome
        }
    };
    let _ = conn.close(200, "drctl done".into()).await;
    outcome
}

/// Print every event of the command until a terminal one, or time out.
pub async fn wait(
    consumer: Consumer,
    cmd: &ValidCommand,
    limit: Duration,
    show: Show,
) -> Result<Outcome, Error> {
    wait_showing(consumer, cmd, limit, show, None).await
}

/// [`wait`], printing around a progress display (its spinner is hidden while a line prints).
pub async fn wait_showing(
    mut consumer: Consumer,
    cmd: &ValidCommand,
    limit: Duration,
    show: Show,
    progress: Option<&Follower>,
) -> Result<Outcome, Error> {
    let quiet = |f: &mut dyn FnMut()| match progress {
        Some(p) => p.suspend(f),
        None => f(),
    };
    let kind = cmd.body.kind();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let delivery = match tokio::time::timeout_at(deadline, consumer.next()).await {
            Err(_) => {
                eprintln!(
                    "drctl: timed out after {}s waiting for the outcome of {} command {}",
                    limit.as_secs(),
                    kind.as_str(),
                    cmd.command_id
                );
                return Ok(Outcome::TimedOut);
            }
            Ok(None) => return Err(Error::ConsumerClosed),
            Ok(Some(d)) => d?,
        };
        let Ok(ev) = EventEnvelope::decode(delivery.data.as_slice()) else {
            continue;
        };
        if !belongs_to(&ev, cmd) {
            continue;
        }
        let mut printed = Ok(());
        quiet(&mut || {
            printed = match (show, &ev.event) {
                (Show::DrillMatrix, Some(Event::DrDrillCompleted(d))) => {
                    crate::drill::print_matrix(d)
                }
                // Only the outcome: the matrix or why there is none.
                (Show::DrillMatrix, Some(e)) if terminal(kind, e).is_none() => Ok(()),
                _ => print_line(&event_line(&ev)),
            };
            if let Some(w) = ev.event.as_ref().and_then(notice::event_warning) {
                eprintln!("{w}");
            }
        });
        printed?;
        if let Some(outcome) = ev.event.as_ref().and_then(|e| terminal(kind, e)) {
            if outcome == Outcome::Failed {
                let ty = ev.event.as_ref().map(event_type).unwrap_or("unknown");
                eprintln!(
                    "drctl: {} command {} ended with {ty}",
                    kind.as_str(),
                    cmd.command_id
                );
            }
            return Ok(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drfleet_infra::config::BrokerArgs;
    use drfleet_protocol::CommandId;
    use drfleet_protocol::auth::{PERM_BACKUP_PROMOTE, PERM_BACKUP_RESTORE};
    use drfleet_protocol::events::envelope;
    use drfleet_protocol::validate::CommandBody;

    use crate::cli::SecretArgs;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn opts(token: Option<&str>, secret: Option<&str>) -> CommandOpts {
        CommandOpts {
            broker: BrokerArgs {
                amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            },
            token: token.map(Into::into),
            secret: SecretArgs {
                auth_jwt_secret: secret.map(Into::into),
                ..Default::default()
            },
            sub: "ops".into(),
            correlation_id: None,
            wait_secs: 600,
            no_wait: false,
        }
    }

    fn restore(org: &TenantKey, mode: ModeArg) -> Command {
        let backup = BackupRecordId::new();
        restore_body(
            &RestoreArgs {
                action: None,
                org: Some(org.clone()),
                backup: Some(backup),
                mode,
                target: None,
                opts: opts(None, None),
                db: DbArgs::default(),
            },
            &backup,
        )
    }

    #[test]
    fn minted_token_carries_exactly_the_needed_permissions() {
        let org = TenantKey::from(drfleet_protocol::OrganizationId::new());
        let (env, valid) = prepare(
            &opts(None, Some(SECRET)),
            new_envelope(&org, None, restore(&org, ModeArg::Promote)),
        )
        .unwrap();
        assert!(matches!(valid.body, CommandBody::Restore(_)));
        assert_eq!(
            env.command_id
                .parse::<CommandId>()
                .unwrap()
                .as_uuid()
                .get_version_num(),
            7
        );
        assert!(uuid::Uuid::parse_str(&env.correlation_id).is_ok());
        let verifier = drfleet_infra::auth::TokenVerifier::new(
            Some(&drfleet_infra::config::Secret::new(SECRET.to_string())),
            None,
        )
        .unwrap();
        let actor = verifier.verify(&env.actor_token).unwrap();
        assert_eq!(actor.org, org.organization_id());
        assert_eq!(actor.sub, "ops");
        assert_eq!(actor.perms, [PERM_BACKUP_RESTORE, PERM_BACKUP_PROMOTE]);
    }

    #[test]
    fn given_token_is_used_and_missing_token_is_a_config_error() {
        let org = TenantKey::from(drfleet_protocol::OrganizationId::new());
        let (env, _) = prepare(
            &opts(Some("tok"), Some(SECRET)),
            new_envelope(&org, Some("c-1"), restore(&org, ModeArg::Staging)),
        )
        .unwrap();
        assert_eq!(env.actor_token, "tok");
        assert_eq!(env.correlation_id, "c-1");
        let e = prepare(
            &opts(None, None),
            new_envelope(&org, None, restore(&org, ModeArg::Staging)),
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::Config(ref c) if c.setting == "DR_ACTOR_TOKEN"),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_commands_are_refused_before_sending() {
        let org = TenantKey::from(drfleet_protocol::OrganizationId::new());
        let bad_tier = Command::Backup(v1::BackupCommand {
            tier: "Bad Tier".into(),
            ..Default::default()
        });
        let e = prepare(&opts(Some("t"), None), new_envelope(&org, None, bad_tier)).unwrap_err();
        assert!(matches!(e, Error::InvalidCommand(_)), "{e:?}");
        let e = prepare(
            &opts(Some("t"), None),
            new_envelope(&org, Some("has space"), restore(&org, ModeArg::Staging)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("correlation_id"), "{e}");
    }

    #[test]
    fn terminal_events() {
        use v1::*;
        let rejected = Event::CommandRejected(CommandRejected::default());
        for k in CommandKind::ALL {
            assert_eq!(terminal(k, &rejected), Some(Outcome::Failed));
        }
        assert_eq!(
            terminal(
                CommandKind::Backup,
                &Event::BackupStarted(Default::default())
            ),
            None
        );
        assert_eq!(
            terminal(
                CommandKind::Backup,
                &Event::BackupCompleted(Default::default())
            ),
            Some(Outcome::Success)
        );
        assert_eq!(
            terminal(
                CommandKind::Backup,
                &Event::BackupFailed(Default::default())
            ),
            Some(Outcome::Failed)
        );
        assert_eq!(
            terminal(
                CommandKind::Restore,
                &Event::RestoreInitiated(Default::default())
            ),
            None
        );
        // A sweep prints each backup_expired and ends with retention_completed/_failed.
        let k = CommandKind::Retention;
        assert_eq!(terminal(k, &Event::BackupExpired(Default::default())), None);
        assert_eq!(
            terminal(k, &Event::RetentionCompleted(Default::default())),
            Some(Outcome::Success)
        );
        assert_eq!(
            terminal(k, &Event::BackupHoldChanged(Default::default())),
            Some(Outcome::Success)
        );
        assert_eq!(
            terminal(k, &Event::RetentionFailed(Default::default())),
            Some(Outcome::Failed)
        );
        assert_eq!(
            terminal(
                CommandKind::Restore,
                &Event::RestoreCompleted(Default::default())
            ),
            Some(Outcome::Success)
        );
        assert_eq!(
            terminal(
                CommandKind::Restore,
                &Event::RestoreFailed(Default::default())
            ),
            Some(Outcome::Failed)
        );
        let ok = |ok| {
            Event::VerifyCompleted(VerifyCompleted {
                ok,
                ..Default::default()
            })
        };
        assert_eq!(
            terminal(CommandKind::Verify, &ok(true)),
            Some(Outcome::Success)
        );
        assert_eq!(
            terminal(CommandKind::Verify, &ok(false)),
            Some(Outcome::Failed)
        );
        let drill = |passed| {
            Event::DrDrillCompleted(DrillCompleted {
                passed,
                ..Default::default()
            })
        };
        assert_eq!(
            terminal(CommandKind::Drill, &drill(true)),
            Some(Outcome::Success)
        );
        assert_eq!(
            terminal(CommandKind::Drill, &drill(false)),
            Some(Outcome::Failed)
        );
        for ev in [
            Event::PolicyUpdated(Default::default()),
            Event::PolicyDeleted(Default::default()),
        ] {
            assert_eq!(terminal(CommandKind::Policy, &ev), Some(Outcome::Success));
        }
        assert_eq!(
            terminal(
                CommandKind::Policy,
                &Event::PolicyFailed(Default::default())
            ),
            Some(Outcome::Failed)
        );
        // A drill's backup events are not its outcome.
        assert_eq!(
            terminal(
                CommandKind::Drill,
                &Event::BackupCompleted(Default::default())
            ),
            None
        );
    }

    #[test]
    fn events_are_matched_on_correlation_and_causation() {
        let org = TenantKey::from(drfleet_protocol::OrganizationId::new());
        let (_, cmd) = prepare(
            &opts(Some("t"), None),
            new_envelope(&org, Some("shared"), restore(&org, ModeArg::Staging)),
        )
        .unwrap();
        let ev = |corr: &str, cause: Option<CommandId>| {
            envelope(
                Some(org.organization_id()),
                corr,
                cause,
                Event::RestoreFailed(Default::default()),
            )
        };
        assert!(belongs_to(&ev("shared", Some(cmd.command_id)), &cmd));
        assert!(belongs_to(&ev("shared", None), &cmd));
        assert!(!belongs_to(&ev("shared", Some(CommandId::new())), &cmd));
        assert!(!belongs_to(&ev("other", Some(cmd.command_id)), &cmd));
        assert_eq!(
            wait_bindings(&org),
            [format!("*.{org}"), "command_rejected.unknown".to_string()]
        );
    }
}
