//! RabbitMQ: connection, the v1 topology, confirmed publishing.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};

use drfleet_protocol::topology::{
    AUDIT_QUEUE, COMMAND_MESSAGE_TYPE, COMMANDS_EXCHANGE, CONTENT_TYPE, CommandKind,
    DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, DELIVERY_LIMIT, EVENTS_EXCHANGE,
};
use drfleet_protocol::v1::CommandEnvelope;
use prost::Message as _;

use crate::error::Retry;
use crate::trace_context::TraceContext;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker error")]
    Broker(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable (returned)")]
    Unroutable,
    #[error("broker did not confirm in time")]
    ConfirmTimeout,
    #[error("command has no body to route by")]
    NoCommandBody,
}

impl Retry for AmqpError {
    fn is_transient(&self) -> bool {
        // A nack means the broker could not store it right now; resending may work.
        !matches!(self, AmqpError::Unroutable | AmqpError::NoCommandBody)
    }
}

/// Why the broker could not be reached at start. Display names host, port, vhost and user,
/// never the password.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct BrokerUnavailable {
    pub reason: String,
    /// Retrying cannot help: credentials refused, vhost missing or not permitted, connection
    /// refused, unknown host.
    pub permanent: bool,
}

/// Connect once and close again: a start-up check that names what is wrong.
pub async fn probe(url: &str) -> Result<(), BrokerUnavailable> {
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|_| BrokerUnavailable {
        reason: "the AMQP URL is invalid".into(),
        permanent: true,
    })?;
    let at = format!("{}:{}", uri.authority.host, uri.authority.port);
    let user = &uri.authority.userinfo.username;
    let vhost = &uri.vhost;
    // Until the broker answered once, its failures are reported by the caller, not by lapin.
    crate::telemetry::mute_lapin(true);
    let conn = match tokio::time::timeout(Duration::from_secs(10), connect(url, "drfleet-probe"))
        .await
    {
        Err(_) => {
            return Err(BrokerUnavailable {
                reason: format!("no answer from {at} within 10 s"),
                permanent: false,
            });
        }
        Ok(Ok(c)) => c,
        Ok(Err(AmqpError::Broker(e))) => {
            use lapin::ErrorKind as K;
            let (permanent, reason) = match e.kind() {
                K::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                    (true, format!("connection refused by {at}"))
                }
                K::IOError(io)
                    if io.to_string().contains("Name or service not known")
                        || io.to_string().contains("No address associated") =>
                {
                    (true, format!("host {} not found", uri.authority.host))
                }
                K::ProtocolError(amqp) if amqp.get_id() == 403 => (
                    true,
                    format!("authentication failed for user \"{user}\" on {at}"),
                ),
                K::ProtocolError(amqp) if amqp.get_id() == 530 => (
                    true,
                    format!(
                        "vhost \"{vhost}\" does not exist on {at} or user \"{user}\" may not use it"
                    ),
                ),
                K::ProtocolError(amqp) => (
                    false,
                    format!("{at} closed the connection: {}", amqp.get_id()),
                ),
                K::IOError(io) => (false, format!("cannot reach {at}: {}", io.kind())),
                _ => (false, format!("cannot connect to {at}")),
            };
            return Err(BrokerUnavailable { reason, permanent });
        }
        Ok(Err(_)) => {
            return Err(BrokerUnavailable {
                reason: format!("cannot connect to {at}"),
                permanent: false,
            });
        }
    };
    let _ = conn.close(200, "start-up check".into()).await;
    crate::telemetry::mute_lapin(false);
    Ok(())
}

/// Open a connection named `name` (shown in the management UI).
pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(url, props).await?)
}

fn quorum_args(dead_letter: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if dead_letter {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
        );
        // RabbitMQ 3.10 sets no default limit on quorum queues: without one a poison message
        // that keeps crashing a consumer would be redelivered forever.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
    }
    args
}

/// Declare the whole v1 topology. Idempotent: every process runs it at start.
pub async fn declare_topology(ch: &Channel) -> Result<(), AmqpError> {
    let durable_ex = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let durable_q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        COMMANDS_EXCHANGE.into(),
        ExchangeKind::Topic,
        durable_ex,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        EVENTS_EXCHANGE.into(),
        ExchangeKind::Topic,
        durable_ex,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        DEAD_LETTER_EXCHANGE.into(),
        ExchangeKind::Fanout,
        durable_ex,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(DEAD_LETTER_QUEUE.into(), durable_q, quorum_args(false))
        .await?;
    ch.queue_bind(
        DEAD_LETTER_QUEUE.into(),
        DEAD_LETTER_EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for kind in CommandKind::ALL {
        ch.queue_declare(kind.queue().into(), durable_q, quorum_args(true))
            .await?;
        ch.queue_bind(
            kind.queue().into(),
            COMMANDS_EXCHANGE.into(),
            kind.binding_key().as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    // The audit sink's queue exists from the first process on, so no event published before
    // the sink starts is lost.
    ch.queue_declare(AUDIT_QUEUE.into(), durable_q, quorum_args(true))
        .await?;
    ch.queue_bind(
        AUDIT_QUEUE.into(),
        EVENTS_EXCHANGE.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Properties of every drfleet message; `trace` becomes the W3C `traceparent`/`tracestate`
/// headers.
pub fn message_properties(
    message_type: &str,
    message_id: &str,
    trace: Option<&TraceContext>,
) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_type(message_type.into())
        .with_message_id(message_id.into())
        .with_delivery_mode(2);
    if let Some(t) = trace {
        let mut headers = FieldTable::default();
        t.insert_into(&mut headers);
        props = props.with_headers(headers);
    }
    props
}

/// Properties of a command message: message_id = command_id, and the current span's trace
/// context (none when tracing is off).
pub fn command_properties(command: &CommandEnvelope) -> BasicProperties {
    message_properties(
        COMMAND_MESSAGE_TYPE,
        &command.command_id,
        TraceContext::current().as_ref(),
    )
}

/// Publish `command` to `dr.commands` with its routing key (`<kind>.<organization_id>`) and
/// wait for the broker's confirm; a Nack or a return is an error. The current span's trace
/// context goes with it: the intake continues that trace.
pub async fn publish_command(
    publisher: &ConfirmPublisher,
    command: &CommandEnvelope,
) -> Result<(), AmqpError> {
    let key = drfleet_protocol::command::routing_key(command).ok_or(AmqpError::NoCommandBody)?;
    publisher
        .publish_confirmed(
            COMMANDS_EXCHANGE,
            &key,
            &command.encode_to_vec(),
            command_properties(command),
        )
        .await
}

/// A channel in confirm mode. Publishing is pipelined: [`Self::publish`] returns the pending
/// confirm and [`wait_confirm`] turns a Nack or a return into an error.
#[derive(Clone)]
pub struct ConfirmPublisher {
    channel: Channel,
}

impl ConfirmPublisher {
    pub async fn new(conn: &Connection) -> Result<Self, AmqpError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publish `mandatory`, so a message no queue takes comes back as an error instead of
    /// vanishing.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<PublisherConfirm, AmqpError> {
        Ok(self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?)
    }

    /// Publish and wait for the broker's confirm.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), AmqpError> {
        let pending = self.publish(exchange, routing_key, body, props).await?;
        wait_confirm(pending).await
    }
}

/// Await one confirm (30 s at most).
pub async fn wait_confirm(pending: PublisherConfirm) -> Result<(), AmqpError> {
    match tokio::time::timeout(Duration::from_secs(30), pending).await {
        Err(_) => Err(AmqpError::ConfirmTimeout),
        Ok(Err(e)) => Err(AmqpError::Broker(e)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(AmqpError::Unroutable),
        Ok(Ok(Confirmation::Nack(_))) => Err(AmqpError::Nacked),
        // confirm_select was called on this channel; an unconfirmed publish is a bug.
        Ok(Ok(Confirmation::NotRequested)) => Err(AmqpError::Nacked),
    }
}
