//! # drfleet-runtime — what every long-running drfleet process shares
//!
//! The workers (`drfleet-worker`) and the scheduler (`drfleet-scheduler`) are both built on
//! this crate; neither links the other.
//!
//! - [`outbox`]: events (and the scheduler's commands) written in the transaction of the state
//!   change they report, relayed to the broker with publisher confirms.
pub mod outbox;
