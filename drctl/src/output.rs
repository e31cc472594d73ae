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

/// A column of a human listing: its header and how a record's JSON shows in it.
pub type Column = (&'static str, fn(&Value) -> String);

/// `v[key]` as a table cell: strings bare, null and "" as `-`.
pub fn cell(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::String(_) | Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Rows under headers, each column as wide as its widest cell (by characters), two spaces
/// apart, the last column not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let all = std::iter::once(headers.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned());
    for cells in all {
        let n = cells.len();
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let w = widths.get(i).copied().unwrap_or(0);
                out.extend(std::iter::repeat_n(' ', w - c.chars().count().min(w) + 2));
            }
        }
        out.push('\n');
    }
    out
}

/// A listing: one JSON line per record, or an aligned table of `columns` (nothing but the
/// headers when empty). A closed pipe ends it quietly.
pub fn print_listing(
    output: crate::cli::OutputFormat,
    records: &[Value],
    columns: &[Column],
) -> std::io::Result<()> {
    let printed = match output {
        crate::cli::OutputFormat::Json => records.iter().try_for_each(print_line),
        crate::cli::OutputFormat::Text => {
            let headers: Vec<&str> = columns.iter().map(|c| c.0).collect();
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| columns.iter().map(|c| (c.1)(r)).collect())
                .collect();
            let mut out = std::io::stdout().lock();
            out.write_all(table(&headers, &rows).as_bytes())
                .and_then(|()| out.flush())
        }
    };
    match printed {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
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
    fn tables_align_columns() {
        let t = table(
            &["ID", "STATUS", "SIZE"],
            &[
                vec!["a".into(), "completed".into(), "1.0 KiB".into()],
                vec!["bbbb".into(), "-".into(), "12 B".into()],
            ],
        );
        assert_eq!(
            t,
            "ID    STATUS     SIZE\na     completed  1.0 KiB\nbbbb  -          12 B\n"
        );
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(cell(&serde_json::json!({"a": null, "b": 3}), "a"), "-");
        assert_eq!(cell(&serde_json::json!({"a": null, "b": 3}), "b"), "3");
    }

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
