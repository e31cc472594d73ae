//! # drfleet-protocol — the wire contract v1
//!
//! What upstream services, the scheduler and every worker agree on:
//!
//! - [`v1`]: the protobuf types generated from `proto/dr/v1/*.proto` (package `dr.v1`).
//!   Those files are normative; clients in other languages compile them with a stock `protoc`.
//! - [`topology`]: exchange, queue and routing-key names, message properties.
//! - [`command`]: building a command envelope and its routing key (the only place).
//! - [`ids`]: UUID newtypes so an organization id is never passed where a record id is meant.
//! - [`tenant`]: tenant keys (uuid, bigint/integer or text) on the wire, their organization ids
//!   and routing-key segments.
//! - [`validate`]: turns raw command bytes into a [`validate::ValidCommand`] or a
//!   [`validate::Rejection`] carrying a reason code and a sanitized message.
//! - [`events`]: building event envelopes and naming their types.
//! - [`auth`]: the permission keys commands require.
//! - [`retention`]: which backups of a policy a sweep keeps, and why (pure).
//! - [`policy`]: schedules and slots (cron in a time zone), human durations, ids of
//!   scheduled commands.

pub mod auth;
pub mod command;
pub mod events;
pub mod ids;
pub mod policy;
pub mod retention;
pub mod tenant;
pub mod topology;
pub mod validate;

/// Generated types of protobuf package `dr.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/dr.v1.rs"));
}

pub use ids::*;
