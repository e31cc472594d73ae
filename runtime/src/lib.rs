//! # drfleet-runtime — what every long-running drfleet process shares
//!
//! The workers (`drfleet-worker`) and the scheduler (`drfleet-scheduler`) are both built on
//! this crate; neither links the other, and nothing here knows a worker role.
//!
//! - [`start`]: start-up — connect and migrate the metadata database, probe the broker;
//!   transient trouble is retried, permanent trouble is a one-line [`start::StartError`].
//! - [`service`]: one shutdown tree — a root token with a child token and a task tracker per
//!   stage, stopped in order (intake → work in flight → relay → broker → listeners → http →
//!   pool).
//! - [`broker`]: the reconnecting broker session — topology, the confirm channel (on a
//!   `watch`), and the caller's consumers ([`broker::Consume`]); publish-only without any.
//! - [`alerts`]: raising and resolving `pf_alerts` with their events (the scheduler's watch and the
//!   drill role).
//! - [`outbox`]: events (and the scheduler's commands) written in the transaction of the state
//!   change they report, relayed to the broker with publisher confirms.
//! - [`notify`]: PostgreSQL LISTEN → in-process wake-ups (`dr_outbox`, `dr_jobs`, …).
//! - [`http`]: `/health`, `/ready` (database + broker), `/metrics`.
//! - [`process`]: a process's start in one call (http first, then [`start`]) and the
//!   signals that end it.
//! - [`metrics`]: [`metrics::ProcessMetrics`], what each process implements over its own
//!   counters for the session, `/ready` and `/metrics`.
pub mod alerts;
pub mod broker;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod process;
pub mod service;
pub mod start;
