//! What the shared runtime reports and serves: each process (workers, scheduler) keeps its own
//! counters and implements [`ProcessMetrics`] over them.

/// Broker state written by the [`crate::broker`] session, read by `/ready`; `/metrics`
/// serves [`ProcessMetrics::render`].
pub trait ProcessMetrics: Send + Sync + 'static {
    /// The session is up (publisher and consumers open) or down.
    fn set_broker_connected(&self, up: bool);
    fn broker_connected(&self) -> bool;
    /// A new session attempt after a lost one.
    fn broker_reconnected(&self);
    /// The Prometheus text exposition of the process's counters.
    fn render(&self) -> String;
}
