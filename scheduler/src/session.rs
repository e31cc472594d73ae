//! The scheduler's broker session: publish only (no consumers). Connects, declares the
//! topology, offers a confirm channel to the outbox relay, and reconnects with backoff when
//! the connection is lost or a publisher reports trouble.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::{AmqpError, ConfirmPublisher, connect, declare_topology};

use crate::metrics::Metrics;

pub async fn run(
    url: String,
    name: String,
    publisher: watch::Sender<Option<ConfirmPublisher>>,
    trouble: Arc<Notify>,
    metrics: Arc<Metrics>,
    close: CancellationToken,
) {
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    while !close.is_cancelled() {
        let setup = async {
            let conn = connect(&url, &name).await?;
            let ch = conn.create_channel().await?;
            declare_topology(&ch).await?;
            let _ = ch.close(200, "topology declared".into()).await;
            let p = ConfirmPublisher::new(&conn).await?;
            Ok::<_, AmqpError>((conn, p))
        };
        match setup.await {
            Ok((conn, p)) => {
                delays = backoff();
                publisher.send_replace(Some(p));
                metrics.broker_connected.store(true, Relaxed);
                tracing::info!("broker connected; topology declared");
                // Until closed, or the connection is found broken.
                loop {
                    tokio::select! {
                        _ = close.cancelled() => break,
                        _ = trouble.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                    if !conn.status().connected() {
                        break;
                    }
                }
                publisher.send_replace(None);
                metrics.broker_connected.store(false, Relaxed);
                let _ = conn.close(200, "closing".into()).await;
                if close.is_cancelled() {
                    break;
                }
                tracing::warn!("broker connection lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "broker unavailable; retrying"),
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            _ = close.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
