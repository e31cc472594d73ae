//! # drctl — operator CLI for drfleet
//!
//! `drctl <subcommand>`; every setting is a flag and a `DR_*` env var. Layout:
//!
//! - [`cli`]: the clap structs (`token`, `backup`, `restore`, `restore discard`, `verify`,
//!   `drill`, `drills`, `retention plan|run`, `hold`, `release`, `events`, `audit verify|list`,
//!   `tiers show`, `policy set|rm|list`, `alerts`, `backups`, `jobs`, `status`, `evidence`,
//!   `evidence check`, `keys rotate-master|rotate|list|certificate`, `shred`).
//! - [`retention`]: `retention plan` (the sweep's selection over the database, deleting
//!   nothing) and the policy lookup of `retention run`.
//! - [`token`]: minting actor tokens (HS256) with `DR_AUTH_JWT_SECRET`.
//! - [`command`]: building a `CommandEnvelope`, validating it with the wire contract's own
//!   validation, publishing it with confirms, and following its events to a terminal one.
//! - [`events`]: tailing `dr.events`.
//! - [`audit`]: hash-chain verification and listing of `pf_audit_events`.
//! - [`tiers`]: `tiers show`, the tables of a tier and how each belongs to a tenant.
//! - [`drill`]: `drill` (the `DrillCommand`, waited for, its pass/fail matrix printed) and
//!   `drills` (the drill reports in the database).
//! - [`policy`]: `policy set|rm` (a `PolicyCommand`, waited for) and `policy list` (the
//!   database).
//! - [`alerts`]: `alerts`, the open alerts in the database.
//! - [`listings`]: `backups` and `jobs` (with progress), from the database.
//! - [`status`]: `status`, one screen of queues, workers, jobs, alerts and RPO.
//! - [`progress`]: the job's progress while a command waits (spinner or plain lines).
//! - [`evidence`]: `evidence` (the compliance pack of `drfleet-evidence`) and `evidence check`.
//! - [`keys`]: `keys …` and `shred` (the key hierarchy's commands, tenant keys, shred
//!   certificates).
//! - [`db`]: the metadata database pool of the subcommands that read it.
//! - [`output`]: the JSON line printed per event (one shape: `events`, command waits and
//!   `audit list` alike), aligned tables for listings.
//! - [`notice`]: stderr notices: the broker and vhost, a queue nobody consumes, backups
//!   that completed with a warning.
//! - [`error`]: [`Error`], [`Outcome`] and the exit codes.
//!
//! `main.rs` only parses the command line ([`drfleet_infra::config::parse_cli`]), runs
//! [`run`] and maps the result to an exit code: 0 success, 1 failed/rejected/broken,
//! 2 configuration or invalid input (one line on stderr), 3 timed out, 4 broker or database
//! error. Stdout carries results only (JSON lines, the token, audit verdicts); progress and
//! errors go to stderr. Tokens and secrets are never printed, except `drctl token`'s output.

pub mod alerts;
pub mod audit;
pub mod cli;
pub mod command;
pub mod db;
pub mod drill;
pub mod error;
pub mod events;
pub mod evidence;
pub mod keys;
pub mod listings;
pub mod notice;
pub mod output;
pub mod policy;
pub mod progress;
pub mod retention;
pub mod status;
pub mod tiers;
pub mod token;

pub use cli::Cli;
pub use error::{EXIT_CONFIG, EXIT_ERROR, EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, Error, Outcome};

use cli::{AuditCmd, Cmd, RestoreAction, RestoreArgs, RetentionCmd, TiersCmd};

/// Run one parsed command line.
pub async fn run(cli: Cli) -> Result<Outcome, Error> {
    match &cli.command {
        Cmd::Token(a) => {
            let t = token::token(a)?;
            output::print_token(&t)?;
            Ok(Outcome::Success)
        }
        Cmd::Backup(a) => {
            command::run_with(
                &a.org,
                command::backup_body(a),
                &a.opts,
                command::Show::Events,
                Some(&a.db),
            )
            .await
        }
        Cmd::Restore(RestoreArgs {
            action: Some(RestoreAction::Discard(d)),
            ..
        }) => command::run(&d.org, command::discard_body(d), &d.opts).await,
        Cmd::Restore(a) => {
            // clap requires both whenever no subcommand is given.
            let (Some(org), Some(backup)) = (a.org.clone(), a.backup) else {
                return Err(drfleet_infra::config::ConfigError::new(
                    "--org/--backup",
                    "are required",
                )
                .into());
            };
            command::run_with(
                &org,
                command::restore_body(a, &backup),
                &a.opts,
                command::Show::Events,
                Some(&a.db),
            )
            .await
        }
        Cmd::Verify(a) => command::run(&a.org, command::verify_body(a), &a.opts).await,
        Cmd::Drill(a) => {
            let body = drill::drill_body(a, drill::policy_id(a).await?)?;
            let show = match a.output {
                cli::OutputFormat::Text => command::Show::DrillMatrix,
                cli::OutputFormat::Json => command::Show::Events,
            };
            command::run_with(&a.org, body, &a.opts, show, Some(&a.db)).await
        }
        Cmd::Drills(a) => drill::list(a).await,
        Cmd::Retention(RetentionCmd::Plan(a)) => retention::plan(a).await,
        Cmd::Retention(RetentionCmd::Run(a)) => {
            command::run(&a.org, retention::run_body(a).await?, &a.opts).await
        }
        Cmd::Hold(a) => command::run(&a.org, command::hold_body(a), &a.opts).await,
        Cmd::Release(a) => command::run(&a.org, command::release_body(a), &a.opts).await,
        Cmd::Keys(keys::KeysCmd::RotateMaster(a)) => {
            command::run(&a.org, keys::rotate_master_body(), &a.opts).await
        }
        Cmd::Keys(keys::KeysCmd::Rotate(a)) => {
            command::run(&a.org, keys::rotate_body(), &a.opts).await
        }
        Cmd::Keys(keys::KeysCmd::List(a)) => keys::list(a).await,
        Cmd::Keys(keys::KeysCmd::Certificate(a)) => keys::certificate(a).await,
        Cmd::Shred(a) => keys::shred(a).await,
        Cmd::Events(a) => events::tail(a).await,
        Cmd::Audit(AuditCmd::Verify { db, org, output }) => {
            audit::verify(db, org.as_ref().map(|k| k.organization_id()), *output).await
        }
        Cmd::Audit(AuditCmd::List {
            db,
            org,
            since,
            limit,
        }) => audit::list(db, org.organization_id(), *since, *limit).await,
        Cmd::Tiers(TiersCmd::Show(a)) => tiers::show(a).await,
        Cmd::Policy(policy::PolicyCmd::Set(a)) => {
            command::run(&a.org, policy::set_body(a)?, &a.opts).await
        }
        Cmd::Policy(policy::PolicyCmd::Rm(a)) => {
            command::run(&a.org, policy::rm_body(a), &a.opts).await
        }
        Cmd::Policy(policy::PolicyCmd::List(a)) => policy::list(a).await,
        Cmd::Alerts(a) => alerts::list(a).await,
        Cmd::Backups(a) => listings::backups(a).await,
        Cmd::Jobs(a) => listings::jobs(a).await,
        Cmd::Status(a) => status::status(a).await,
        Cmd::Evidence(a) => evidence::run(a).await,
    }
}
