//! The JSON line printed for every event (`drctl events`, and while a command waits).

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use drfleet_protocol::events::{event_json, event_type, from_timestamp};
use drfleet_protocol::v1::EventEnvelope;

/// An event as drctl prints it, from the wire (`drctl events`, command waits) or from the
/// audit log (`drctl audit list`): one shape wherever it comes from.
pub struct EventFields<'a> {
    pub event_type: Option<&'a str>,
    pub event_id: &'a str,
    /// Empty when the organization could not be read.
    pub organization_id: &'a str,
    pub occurred_at: Option<DateTime<Utc>>,
    pub causation_id: &'a str,
    pub correlation_id: &'a str,
    pub event: Option<Value>,
}

/// RFC 3339 in UTC, at microsecond precision (what the audit log stores), trailing zero
/// digits left out.
pub fn instant(t: DateTime<Utc>) -> Value {
    DateTime::from_timestamp_micros(t.timestamp_micros())
        .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
        .unwrap_or(Value::Null)
}

/// `{"event_type", "event_id", "organization_id", "occurred_at", "causation_id",
/// "correlation_id", "event"}`; `event` holds the event's fields as the audit log stores them.
pub fn event_object(f: EventFields<'_>) -> Value {
    json!({
        "event_type": f.event_type,
        "event_id": f.event_id,
        "organization_id": f.organization_id,
        "occurred_at": f.occurred_at.map(instant).unwrap_or(Value::Null),
        "causation_id": f.causation_id,
        "correlation_id": f.correlation_id,
        "event": f.event,
    })
}

/// [`event_object`] of an envelope off the wire.
pub fn event_line(env: &EventEnvelope) -> Value {
    event_object(EventFields {
        event_type: env.event.as_ref().map(event_type),
        event_id: &env.event_id,
        organization_id: &env.organization_id,
        occurred_at: env.occurred_at.as_ref().and_then(from_timestamp),
        causation_id: &env.causation_id,
        correlation_id: &env.correlation_id,
        event: env.event.as_ref().map(event_json),
    })
}

/// Write one JSON value as a line to stdout and flush it (so pipes see it at once).
pub fn print_line(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// One record of a listing: a JSON line, or `text` of it. `Ok(false)` when the reader went
/// away (a closed pipe ends a listing quietly, e.g. `| head`).
pub fn print_record(
    output: crate::cli::OutputFormat,
    v: &Value,
    text: impl FnOnce(&Value) -> String,
) -> std::io::Result<bool> {
    let printed = match output {
        crate::cli::OutputFormat::Json => print_line(v),
        crate::cli::OutputFormat::Text => writeln!(std::io::stdout().lock(), "{}", text(v)),
    };
    match printed {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

/// `drctl token`'s output: the token and a newline, nothing else.
pub fn print_token(token: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drfleet_protocol::OrganizationId;
    use drfleet_protocol::events::envelope;
    use drfleet_protocol::v1::{VerifyCompleted, event_envelope::Event};

    #[test]
    fn line_shape() {
        let org = OrganizationId::new();
        let env = envelope(
            Some(org),
            "corr-1",
            None,
            Event::VerifyCompleted(VerifyCompleted {
                backup_record_id: "b".into(),
                ok: true,
                error_code: String::new(),
            }),
        );
        let v = event_line(&env);
        assert_eq!(v["event_type"], "verify_completed");
        assert_eq!(v["organization_id"], org.to_string());
        assert_eq!(v["correlation_id"], "corr-1");
        assert_eq!(v["causation_id"], "");
        assert_eq!(v["event"]["ok"], true);
        assert!(v["occurred_at"].as_str().unwrap().ends_with('Z'));
    }
}
