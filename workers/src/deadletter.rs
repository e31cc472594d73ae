//! Dead-lettering without secrets: the copy of a refused command that goes to
//! `dr.dead-letter` carries no usable bearer token.
//!
//! The intake publishes the copy itself (publisher confirms) and acks the original only after
//! the confirm, instead of letting RabbitMQ's dead-letter exchange copy the message verbatim.
//! The copy keeps `message_id`, `type`, `content_type` and `traceparent`, drops every other
//! header, and adds [`H_REASON`], [`H_EXCHANGE`], [`H_ROUTING_KEY`], [`H_QUEUE`] and
//! [`H_TOKEN`]. Its body is the envelope with `actor_token` cut to the JWT's header and claims
//! (the signature removed, so it cannot authenticate anything), or emptied when it is not a
//! JWT; a body that does not decode has every JWT-shaped text's signature overwritten.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use prost::Message;

use drfleet_infra::amqp::{AmqpError, ConfirmPublisher};
use drfleet_protocol::topology::DEAD_LETTER_EXCHANGE;
use drfleet_protocol::v1::{self, command_envelope::Command};

/// Header: why the message was dead-lettered (a `command_rejected` reason code, or
/// [`REASON_DELIVERY_LIMIT`]).
pub const H_REASON: &str = "dr-reason-code";
/// Header: the exchange the message was published to.
pub const H_EXCHANGE: &str = "dr-original-exchange";
/// Header: the routing key it was published with.
pub const H_ROUTING_KEY: &str = "dr-original-routing-key";
/// Header: the queue it was consumed from.
pub const H_QUEUE: &str = "dr-original-queue";
/// Header: `redacted` — the actor token's signature was removed.
pub const H_TOKEN: &str = "dr-token";
/// Reason of a message dead-lettered because it reached the delivery limit (it kept failing
/// or crashing workers); it got no `command_rejected` event.
pub const REASON_DELIVERY_LIMIT: &str = "DELIVERY_LIMIT";

/// Publish the redacted copy of `delivery` to `dr.dead-letter` and wait for the confirm.
pub async fn publish(
    publisher: &ConfirmPublisher,
    delivery: &Delivery,
    queue: &str,
    reason: &str,
) -> Result<(), AmqpError> {
    let body = redact_body(&delivery.data);
    let props = copy_properties(delivery, queue, reason);
    publisher
        .publish_confirmed(DEAD_LETTER_EXCHANGE, "", &body, props)
        .await
}

fn copy_properties(delivery: &Delivery, queue: &str, reason: &str) -> BasicProperties {
    let p = &delivery.properties;
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert(H_REASON.into(), text(reason));
    headers.insert(H_EXCHANGE.into(), text(delivery.exchange.as_str()));
    headers.insert(H_ROUTING_KEY.into(), text(delivery.routing_key.as_str()));
    headers.insert(H_QUEUE.into(), text(queue));
    headers.insert(H_TOKEN.into(), text("redacted"));
    // The caller's own headers are not copied (they could carry credentials too); only the
    // trace context, which is an id.
    if let Some(tp) = p
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent"))
        .and_then(|v| v.as_long_string())
        .filter(|tp| tp.as_bytes().len() <= 128)
    {
        headers.insert("traceparent".into(), text(&scrub_text(&tp.to_string())));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    // Caller-chosen text: a token pasted there is cut like anywhere else.
    if let Some(v) = p.message_id() {
        props = props.with_message_id(scrub_text(v.as_str()).into());
    }
    if let Some(v) = p.kind() {
        props = props.with_type(scrub_text(v.as_str()).into());
    }
    if let Some(v) = p.content_type() {
        props = props.with_content_type(v.clone());
    }
    props
}

/// The body of the dead-lettered copy.
pub fn redact_body(data: &[u8]) -> Vec<u8> {
    match v1::CommandEnvelope::decode(data) {
        Ok(mut env) => {
            env.actor_token = redact_token(&env.actor_token);
            // A token pasted into any other field is cut too.
            for s in [
                &mut env.command_id,
                &mut env.organization_id,
                &mut env.correlation_id,
            ] {
                *s = scrub_text(s);
            }
            match &mut env.command {
                Some(Command::Backup(b)) => {
                    for s in [&mut b.tier, &mut b.policy_id, &mut b.reason] {
                        *s = scrub_text(s);
                    }
                }
                Some(Command::Restore(r)) => {
                    for s in [&mut r.backup_record_id, &mut r.target] {
                        *s = scrub_text(s);
                    }
                }
                Some(Command::Drill(d)) => {
                    for s in [&mut d.backup_record_id, &mut d.tier] {
                        *s = scrub_text(s);
                    }
                }
                Some(Command::Verify(v)) => v.backup_record_id = scrub_text(&v.backup_record_id),
                Some(Command::StagingDiscard(d)) => {
                    d.restore_job_id = scrub_text(&d.restore_job_id)
                }
                Some(Command::Retention(r)) => r.policy_id = scrub_text(&r.policy_id),
                Some(Command::Shred(s)) => s.reason = scrub_text(&s.reason),
                Some(Command::Keys(_)) => {}
                Some(Command::BackupHold(h)) => {
                    for s in [&mut h.backup_record_id, &mut h.reason] {
                        *s = scrub_text(s);
                    }
                }
                Some(Command::Policy(p)) => {
                    p.name = scrub_text(&p.name);
                    if let Some(spec) = &mut p.spec {
                        for s in [
                            &mut spec.tier,
                            &mut spec.schedule,
                            &mut spec.timezone,
                            &mut spec.drill_schedule,
                        ] {
                            *s = scrub_text(s);
                        }
                    }
                }
                None => {}
            }
            // Fields this version does not know are dropped by decoding: they could hold
            // anything.
            env.encode_to_vec()
        }
        Err(_) => scrub(data),
    }
}

/// A JWT without its signature (`header.claims`: who, which organization, which permissions,
/// until when — enough to investigate, useless to authenticate); anything else removed.
pub fn redact_token(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let b64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    if parts.len() >= 3 && b64url(parts[0]) && b64url(parts[1]) {
        format!("{}.{}", parts[0], parts[1])
    } else {
        String::new()
    }
}

fn scrub_text(s: &str) -> String {
    // `scrub` only overwrites ASCII with ASCII, so the text stays UTF-8.
    String::from_utf8(scrub(s.as_bytes())).unwrap_or_default()
}

/// Overwrite with `*` the signature (and anything after it) of every JWT-shaped run of
/// base64url text: three or more dot-separated segments, the first at least 10 characters,
/// the third at least 16 (shorter ones are version numbers and host names, not tokens).
pub fn scrub(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let token_char =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'+' | b'/' | b'.');
    let mut i = 0;
    while i < out.len() {
        if !token_char(out[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < out.len() && token_char(out[i]) {
            i += 1;
        }
        let run = &out[start..i];
        let segments: Vec<&[u8]> = run.split(|b| *b == b'.').collect();
        if segments.len() >= 3 && segments[0].len() >= 10 && segments[2].len() >= 16 {
            let sig_start = start + segments[0].len() + 1 + segments[1].len() + 1;
            out[sig_start..i].fill(b'*');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    fn jwt() -> String {
        format!("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEiLCJvcmciOiJ4In0.{SIG}")
    }

    fn envelope(token: &str, reason: &str) -> v1::CommandEnvelope {
        v1::CommandEnvelope {
            command_id: "0190f1a2-3b4c-7d5e-8f60-718293a4b5c6".into(),
            organization_id: "0190f1a2-3b4c-7d5e-8f60-000000000001".into(),
            issued_at: None,
            actor_token: token.into(),
            correlation_id: "corr-1".into(),
            command: Some(Command::Backup(v1::BackupCommand {
                tier: "full".into(),
                policy_id: "nightly".into(),
                reason: reason.into(),
                scheduled_for: None,
            })),
        }
    }

    #[test]
    fn token_keeps_header_and_claims_only() {
        assert_eq!(
            redact_token(&jwt()),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEiLCJvcmciOiJ4In0"
        );
        assert_eq!(redact_token("opaque-bearer-secret"), "");
        assert_eq!(redact_token(""), "");
        assert_eq!(redact_token("a b.c.d"), "");
    }

    #[test]
    fn decodable_envelopes_lose_every_signature_and_keep_the_rest() {
        let env = envelope(&jwt(), &format!("see {}", jwt()));
        let out = redact_body(&env.encode_to_vec());
        assert!(!out.windows(SIG.len()).any(|w| w == SIG.as_bytes()));
        let back = v1::CommandEnvelope::decode(out.as_slice()).unwrap();
        assert_eq!(back.command_id, env.command_id);
        assert_eq!(back.organization_id, env.organization_id);
        assert_eq!(back.correlation_id, "corr-1");
        assert!(back.actor_token.starts_with("eyJhbGciOiJIUzI1NiJ9."));
        assert_eq!(back.actor_token.split('.').count(), 2);
    }

    #[test]
    fn undecodable_bodies_are_scrubbed_in_place() {
        let mut raw = b"\xff\xfe garbage ".to_vec();
        raw.extend_from_slice(jwt().as_bytes());
        raw.extend_from_slice(b" tail v1.2.3 db.example.com");
        let out = scrub(&raw);
        assert_eq!(out.len(), raw.len());
        assert!(!out.windows(SIG.len()).any(|w| w == SIG.as_bytes()));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEiLCJvcmciOiJ4In0.****"));
        assert!(text.ends_with(" tail v1.2.3 db.example.com"));
    }
}
