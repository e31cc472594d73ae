//! The worker's consumers on the shared broker session ([`drfleet_runtime::broker`]): one
//! command intake per role queue, and the audit sink on `dr.audit`.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::Consumer;
use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::ConfirmPublisher;
use drfleet_runtime::broker::{Consume, ConsumeCtx};

use crate::audit::AuditSink;
use crate::intake::Intake;

/// Commands of one kind into [`Intake`].
pub struct Commands {
    pub intake: Arc<Intake>,
    pub prefetch: u16,
}

impl Consume for Commands {
    fn queue(&self) -> &str {
        self.intake.kind.queue()
    }
    fn prefetch(&self) -> u16 {
        self.prefetch
    }
    /// Refused commands are dead-lettered by the intake itself (a redacted copy, confirmed
    /// before the original is acked), on a confirm channel of its own.
    fn own_publisher(&self) -> bool {
        true
    }
    fn consume<'a>(&'a self, consumer: &'a mut Consumer, ctx: ConsumeCtx) -> BoxFuture<'a, ()> {
        let dead_letters = ctx
            .publisher
            .expect("a command consumer has a dead-letter channel");
        Box::pin(command_loop(
            consumer,
            dead_letters,
            self.intake.clone(),
            ctx.stop,
            ctx.shutdown,
        ))
    }
}

/// Events into the audit sink, in batches.
pub struct Audit {
    pub sink: Arc<AuditSink>,
    pub prefetch: u16,
}

impl Consume for Audit {
    fn queue(&self) -> &str {
        drfleet_protocol::topology::AUDIT_QUEUE
    }
    fn prefetch(&self) -> u16 {
        self.prefetch
    }
    fn consume<'a>(&'a self, consumer: &'a mut Consumer, ctx: ConsumeCtx) -> BoxFuture<'a, ()> {
        Box::pin(crate::audit::consume_loop(
            consumer,
            self.sink.clone(),
            ctx.stop,
        ))
    }
}

async fn command_loop(
    consumer: &mut Consumer,
    dead_letters: ConfirmPublisher,
    intake: Arc<Intake>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = consumer.next() => n,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::warn!(queue = intake.kind.queue(), error = %e, "consumer failed");
                return;
            }
            None => return,
        };
        if let Err(e) = intake.handle(delivery, &dead_letters, &shutdown).await {
            tracing::warn!(queue = intake.kind.queue(), error = %e, "could not settle a delivery; it will be redelivered");
            return;
        }
    }
}
