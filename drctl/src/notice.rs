//! What drctl tells the operator on stderr besides progress: which broker it talks to, a
//! queue nobody consumes, and backups that completed with a warning.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::event_envelope::Event;

use crate::error::Error;

/// `host:port, vhost <vhost>` of an AMQP URL: never the credentials.
pub fn broker_target(url: &str) -> Option<String> {
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    Some(format!(
        "{}:{}, vhost {}",
        uri.authority.host, uri.authority.port, uri.vhost
    ))
}

/// Consumers of `kind`'s queue, by a passive declare (on a channel of its own: a passive
/// declare of a missing queue closes its channel).
pub async fn consumer_count(conn: &lapin::Connection, kind: CommandKind) -> Result<u32, Error> {
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            kind.queue().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = ch.close(200, "done".into()).await;
    Ok(q.consumer_count())
}

/// The line printed when no worker consumes the queue a command went to.
pub fn no_consumer_warning(kind: CommandKind) -> String {
    format!(
        "drctl: warning: no worker consumes {}; the command waits in the queue",
        kind.queue()
    )
}

/// Warn (stderr) when nothing consumes `kind`'s queue. A failed check is not an error of
/// the command: it is reported and skipped.
pub async fn warn_if_unconsumed(conn: &lapin::Connection, kind: CommandKind) {
    match consumer_count(conn, kind).await {
        Ok(0) => eprintln!("{}", no_consumer_warning(kind)),
        Ok(_) => {}
        Err(_) => eprintln!("drctl: could not check the consumers of {}", kind.queue()),
    }
}

/// A warning line for an event that completed with one (an empty or sharply shrunk backup).
pub fn event_warning(event: &Event) -> Option<String> {
    match event {
        Event::BackupCompleted(b) if b.warning_code == "ROW_COUNT_DROP" => Some(format!(
            "drctl: warning: ROW_COUNT_DROP: backup {} holds {} rows, down from {} in the previous backup of this policy or tier (mass deletion?)",
            b.backup_record_id, b.row_count, b.previous_row_count
        )),
        Event::BackupCompleted(b) if b.empty => Some(format!(
            "drctl: warning: EMPTY_BACKUP: backup {} holds no rows in any table: is the organization id right?",
            b.backup_record_id
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drfleet_protocol::v1::BackupCompleted;

    #[test]
    fn broker_target_has_no_credentials() {
        let t = broker_target("amqp://user:PASSWORDMARK@rabbit.example:5673/prod%2dvh").unwrap();
        assert_eq!(t, "rabbit.example:5673, vhost prod-vh");
        let t = broker_target("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(t, "127.0.0.1:5672, vhost /");
        assert!(broker_target("nope").is_none());
    }

    #[test]
    fn warnings_for_shrunk_and_empty_backups() {
        let ok = Event::BackupCompleted(BackupCompleted {
            row_count: 10,
            ..Default::default()
        });
        assert_eq!(event_warning(&ok), None);
        let empty = Event::BackupCompleted(BackupCompleted {
            backup_record_id: "r1".into(),
            empty: true,
            warning_code: "EMPTY_BACKUP".into(),
            ..Default::default()
        });
        assert!(event_warning(&empty).unwrap().contains("EMPTY_BACKUP"));
        let dropped = Event::BackupCompleted(BackupCompleted {
            row_count: 100,
            previous_row_count: 10_000,
            warning_code: "ROW_COUNT_DROP".into(),
            ..Default::default()
        });
        let w = event_warning(&dropped).unwrap();
        assert!(w.contains("ROW_COUNT_DROP") && w.contains("10000"), "{w}");
        assert_eq!(
            no_consumer_warning(CommandKind::Drill),
            "drctl: warning: no worker consumes dr.drill; the command waits in the queue"
        );
    }
}
