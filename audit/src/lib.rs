//! # drfleet-audit — the audit log's hash chain
//!
//! `pf_audit_events` holds every event once, in one hash chain per organization (the nil UUID
//! for events whose organization could not be read). Each row's `hash` = sha256(previous
//! row's hash ‖ canonical bytes), where the canonical bytes are a sorted-key JSON of every
//! stored column; `pf_audit_heads` holds each chain's last position and hash, so deleting the
//! newest rows is detected too.
//!
//! Shared by the audit sink (`drfleet-worker --role audit`, which appends), `drctl audit`
//! (verifies, lists) and the compliance evidence pack (verifies, records the head). It reads
//! and writes the metadata database only: no broker, no worker runtime.
//!
//! Layout:
//! - [`chain`]: [`AuditRecord`], its canonical bytes and [`chain_hash`].
//! - [`store`]: [`store_batch`], appending a batch in one transaction.
//! - [`verify`]: [`verify_chains`] and the heads ([`chain_head`], [`hash_at`]).

pub mod chain;
pub mod store;
pub mod verify;

pub use chain::{AuditRecord, GENESIS, UNKNOWN_CHAIN, chain_hash};
pub use store::store_batch;
pub use verify::{BrokenLink, ChainHead, chain_head, hash_at, verify_chains};
