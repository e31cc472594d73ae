//! PostgreSQL LISTEN: wake in-process tasks on notifications from any process (`dr_outbox`
//! wakes the relay, `dr_jobs` the workers' job runners). Polling covers missed ones, so a
//! lost listener connection is only re-established, never reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a notification on one channel does, given its payload.
pub type OnNotification = Arc<dyn Fn(&str) + Send + Sync>;

/// Wake `notify` on every notification of a channel, whatever its payload.
pub fn wake(notify: Arc<Notify>) -> OnNotification {
    Arc::new(move |_| notify.notify_one())
}

/// Listen on every channel of `routes` until `stop`.
pub async fn listen_notifications(
    pool: PgPool,
    routes: HashMap<&'static str, OnNotification>,
    stop: CancellationToken,
) {
    let channels: Vec<&str> = routes.keys().copied().collect();
    while !stop.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(_) => {
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(2)) => continue }
            }
        };
        if listener.listen_all(channels.iter().copied()).await.is_err() {
            continue;
        }
        loop {
            let n = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.recv() => n,
            };
            match n {
                Ok(n) => {
                    if let Some(route) = routes.get(n.channel()) {
                        route(n.payload());
                    }
                }
                Err(_) => break,
            }
        }
    }
}
