//! `drctl events`: tail `dr.events` through an exclusive auto-delete queue.

use futures::StreamExt;
use prost::Message;

use drfleet_protocol::events::event_type;
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::v1::EventEnvelope;

use crate::cli::EventsArgs;
use crate::command::{event_consumer, open};
use crate::error::{Error, Outcome};
use crate::output::{event_line, print_line};

/// Binding keys for the filters: routing keys are `<event_type>.<organization_id>`.
pub fn bindings(org: Option<&TenantKey>, ty: Option<&str>) -> String {
    match (ty, org.map(|o| o.routing_segment())) {
        (Some(t), Some(o)) => format!("{t}.{o}"),
        (None, Some(o)) => format!("*.{o}"),
        (Some(t), None) => format!("{t}.*"),
        (None, None) => "#".to_string(),
    }
}

/// Whether an event passes the filters (the bindings already select; this double-checks
/// against the envelope itself).
pub fn matches(ev: &EventEnvelope, org: Option<&TenantKey>, ty: Option<&str>) -> bool {
    org.is_none_or(|o| TenantKey::parse(&ev.organization_id).is_ok_and(|k| k == *o))
        && ty.is_none_or(|t| ev.event.as_ref().map(event_type) == Some(t))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn tail(args: &EventsArgs) -> Result<Outcome, Error> {
    let org = args.org.as_ref();
    let ty = args.event_type.as_deref();
    let (conn, ch) = open(&args.broker.amqp_url).await?;
    let key = bindings(org, ty);
    let mut consumer = event_consumer(&ch, std::slice::from_ref(&key), "drctl-events").await?;
    // Tells scripts (and tests) that no event published from now on is missed.
    eprintln!("drctl: listening on dr.events with binding key {key}");

    let stop = stop_signal();
    tokio::pin!(stop);
    let mut seen = 0u64;
    let result = loop {
        let delivery = tokio::select! {
            _ = &mut stop => break Ok(Outcome::Success),
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            None => break Err(Error::ConsumerClosed),
            Some(Err(e)) => break Err(e.into()),
            Some(Ok(d)) => d,
        };
        let Ok(ev) = EventEnvelope::decode(delivery.data.as_slice()) else {
            eprintln!(
                "drctl: skipped an undecodable message (routing key {})",
                delivery.routing_key
            );
            continue;
        };
        if !matches(&ev, org, ty) {
            continue;
        }
        match print_line(&event_line(&ev)) {
            Ok(()) => {}
            // The reader went away (`drctl events | head`): a normal end.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break Ok(Outcome::Success),
            Err(e) => break Err(e.into()),
        }
        seen += 1;
        if args.limit.is_some_and(|l| seen >= l) {
            break Ok(Outcome::Success);
        }
    };
    let _ = conn.close(200, "drctl done".into()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_keys() {
        let o = TenantKey::from(drfleet_protocol::OrganizationId::new());
        assert_eq!(bindings(None, None), "#");
        assert_eq!(bindings(Some(&o), None), format!("*.{o}"));
        assert_eq!(bindings(None, Some("backup_failed")), "backup_failed.*");
        assert_eq!(
            bindings(Some(&o), Some("backup_failed")),
            format!("backup_failed.{o}")
        );
        // Integer keys as they are; a key a routing key cannot carry, by its hashed segment.
        let n = TenantKey::parse("42").unwrap();
        assert_eq!(bindings(Some(&n), None), "*.42");
        let t = TenantKey::parse("acme corp.eu").unwrap();
        let b = bindings(Some(&t), Some("backup_failed"));
        assert_eq!(b, format!("backup_failed.{}", t.routing_segment()));
        assert!(b.starts_with("backup_failed.k-") && !b.contains(' '));
    }

    #[test]
    fn events_match_by_canonical_key() {
        let ev = |org: &str| EventEnvelope {
            organization_id: org.into(),
            ..Default::default()
        };
        let u = drfleet_protocol::OrganizationId::new().to_string();
        let k = TenantKey::parse(&u).unwrap();
        assert!(matches(&ev(&u.to_uppercase()), Some(&k), None));
        let t = TenantKey::parse("acme corp.eu").unwrap();
        assert!(matches(&ev("acme corp.eu"), Some(&t), None));
        assert!(!matches(&ev("acme corp.EU"), Some(&t), None));
        assert!(!matches(&ev(""), Some(&t), None));
    }
}
