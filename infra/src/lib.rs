//! # drfleet-infra — plumbing shared by every drfleet process
//!
//! - [`config`]: settings from `DR_*` env vars / clap flags, validated into typed values;
//!   a bad setting ends the process with one line on stderr and exit code 2.
//! - [`telemetry`]: tracing subscriber (json or text logs) and, when the standard `OTEL_*`
//!   variables ask for it, OpenTelemetry traces exported over OTLP.
//! - [`trace_context`]: W3C trace context in AMQP headers and in the `trace_context` columns,
//!   so one command is one trace across processes.
//! - [`amqp`]: connecting to RabbitMQ, declaring the v1 topology, confirmed publishing
//!   ([`amqp::publish_command`]: the one way a command is published).
//! - [`db`]: the PostgreSQL pool and the embedded migrations.
//! - [`auth`]: actor tokens (JWT): minting ([`auth::TokenMinter`]: drctl, the scheduler,
//!   tests) and verification (workers).
//! - [`error`]: the transient/permanent distinction every retry decision uses.
//! - [`metadata`]: metadata reads several programs share (retention candidates).

pub mod amqp;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod metadata;
pub mod telemetry;
pub mod trace_context;

pub use error::Retry;
