//! Figures of the HTTP API, the event stream and webhook delivery.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Figures of the HTTP API, the event stream and webhook delivery.
#[derive(Clone)]
pub struct ApiMetrics {
    /// By `route` (the route pattern, bounded) and `code`.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub event_streams: IntGauge,
    /// By `result`: delivered, retry, dead.
    pub webhook_deliveries: IntCounterVec,
    pub webhook_pending: IntGauge,
    /// Connections closed at accept because `server.max_connections` were open.
    pub connections_refused: IntCounter,
    /// Open HTTP connections.
    pub connections: IntGauge,
    /// Database writes that failed on the storage (full disk, read-only, IO, lock).
    pub store_errors: IntCounter,
}

/// Delivery results, each a series from the start (per configured webhook), so
/// `increase()` sees the first one.
pub const WEBHOOK_RESULTS: [&str; 3] = ["delivered", "retry", "dead"];

impl ApiMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let api = ApiMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "workspaced_api_requests_total",
                    "API requests by route pattern and status code.",
                ),
                &["route", "code"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "workspaced_api_request_duration_seconds",
                    "Time to the response head of an API request, by route pattern.",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0]),
                &["route"],
            )?,
            event_streams: IntGauge::new(
                "workspaced_api_event_streams",
                "Clients connected to the event stream (/api/v1/events).",
            )?,
            webhook_deliveries: IntCounterVec::new(
                Opts::new(
                    "workspaced_webhook_deliveries_total",
                    "Webhook delivery attempts by webhook name and result: delivered, retry (failed, will retry), dead (gave up).",
                ),
                &["webhook", "result"],
            )?,
            webhook_pending: IntGauge::new(
                "workspaced_webhook_pending_deliveries",
                "Webhook deliveries waiting for their next attempt.",
            )?,
            connections_refused: IntCounter::new(
                "workspaced_http_connections_refused_total",
                "Connections closed at once because server.max_connections were open.",
            )?,
            connections: IntGauge::new("workspaced_http_connections", "Open HTTP connections.")?,
            store_errors: IntCounter::new(
                "workspaced_store_errors_total",
                "Database writes that failed on the storage: full disk, read-only file, I/O error, a lock held elsewhere.",
            )?,
        };
        for collector in [
            Box::new(api.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(api.request_duration.clone()),
            Box::new(api.event_streams.clone()),
            Box::new(api.webhook_deliveries.clone()),
            Box::new(api.webhook_pending.clone()),
            Box::new(api.connections_refused.clone()),
            Box::new(api.connections.clone()),
            Box::new(api.store_errors.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(api)
    }
}
