//! Figures of the app proxy and of activity reports.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct ProxyMetrics {
    /// Proxied requests by `app` (a port name of a template: bounded by the config) and
    /// `code` (the status returned, the proxy's own refusals included).
    pub requests: IntCounterVec,
    /// Body and tunnel bytes by `direction`: `to_workspace`, `from_workspace`.
    pub bytes: IntCounterVec,
    /// WebSocket (upgraded) connections open through the proxy.
    pub websockets: IntGauge,
    /// Activity reports by `source` (api, proxy, backend) and `result`: recorded,
    /// coalesced (within a minute of the last one), failed (the write failed).
    pub activity_reports: IntCounterVec,
}

/// The directions of `workspaced_proxy_bytes_total`.
pub const DIRECTIONS: [&str; 2] = ["to_workspace", "from_workspace"];

impl ProxyMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let proxy = ProxyMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "workspaced_proxy_requests_total",
                    "Requests to workspace apps through the app proxy, by app name and status code.",
                ),
                &["app", "code"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "workspaced_proxy_bytes_total",
                    "Bytes the app proxy relayed (bodies and WebSocket tunnels), by direction (to_workspace, from_workspace).",
                ),
                &["direction"],
            )?,
            websockets: IntGauge::new(
                "workspaced_proxy_websockets",
                "WebSocket (upgraded) connections open through the app proxy.",
            )?,
            activity_reports: IntCounterVec::new(
                Opts::new(
                    "workspaced_activity_reports_total",
                    "Workspace activity reports by source (api, proxy, backend) and result (recorded, coalesced, failed).",
                ),
                &["source", "result"],
            )?,
        };
        for direction in DIRECTIONS {
            proxy.bytes.with_label_values(&[direction]);
        }
        for source in ["api", "proxy", "backend"] {
            for result in ["recorded", "coalesced", "failed"] {
                proxy.activity_reports.with_label_values(&[source, result]);
            }
        }
        registry.register(Box::new(proxy.requests.clone()))?;
        registry.register(Box::new(proxy.bytes.clone()))?;
        registry.register(Box::new(proxy.websockets.clone()))?;
        registry.register(Box::new(proxy.activity_reports.clone()))?;
        Ok(proxy)
    }
}
