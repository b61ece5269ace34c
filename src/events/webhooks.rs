//! Webhooks: committed events POSTed to the receivers of `[[webhooks]]`, signed with
//! HMAC-SHA256, at least once, retried with exponential backoff, dead-lettered after
//! `max_attempts`.
//!
//! Owns the delivery worker. It reads only committed outbox rows: per webhook a cursor in
//! the database moves over the outbox and each event that passes the webhook's filter
//! becomes a delivery row (same transaction as the cursor move), so a crash loses nothing
//! and at worst re-sends (receivers deduplicate on `Idempotency-Key` = the event id).
//! A new webhook starts at the end of the outbox: it gets events from its creation on.
//!
//! Request: `POST url`, body `{"id", "kind", "created_at", "event"}`, headers
//! `Idempotency-Key`, `X-Workspaced-Event`, `X-Workspaced-Delivery`,
//! `X-Workspaced-Timestamp` (Unix seconds) and `X-Workspaced-Signature: sha256=<hex>` =
//! HMAC-SHA256(secret, "<timestamp>.<body>"). Any 2xx is success.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rusqlite::Connection;
use sha2::Sha256;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, WebhookConfig};
use crate::domain::event::PublishedEvent;
use crate::metrics::ApiMetrics;
use crate::store::time::{from_millis, to_millis};
use crate::store::webhooks::{self as store_webhooks, AttemptRecord, Due};
use crate::store::{Store, StoreError};

/// `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>").
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + digest.len() * 2);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The wait before attempt `attempts + 1`, after `attempts` failures.
pub fn backoff(webhook: &WebhookConfig, attempts: u32) -> Duration {
    let initial = webhook.initial_backoff.as_secs();
    let factor = 1u64.checked_shl(attempts.saturating_sub(1)).unwrap_or(u64::MAX);
    Duration::from_secs(initial.saturating_mul(factor).min(webhook.max_backoff.as_secs()))
}

/// Moves every webhook's cursor over the committed outbox, queueing a delivery for each
/// event it wants. Returns how many deliveries were queued.
fn enqueue(
    conn: &Connection,
    webhooks: &[WebhookConfig],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let mut queued = 0;
    for webhook in webhooks {
        let Some(cursor) = store_webhooks::cursor(conn, &webhook.name)? else {
            // New webhook: from now on.
            store_webhooks::start_cursor_at_the_end(conn, &webhook.name)?;
            continue;
        };
        let events = store_webhooks::events_after(conn, cursor, 1000)?;
        let Some((last, _)) = events.last() else { continue };
        for (id, kind) in &events {
            if webhook.wants(kind) {
                queued += store_webhooks::queue_delivery(conn, &webhook.name, *id, now)?;
            }
        }
        store_webhooks::move_cursor(conn, &webhook.name, *last)?;
    }
    Ok(queued)
}

/// The outcome of one attempt.
struct Attempt {
    delivery_id: i64,
    status: Option<u16>,
    error: Option<String>,
}

/// The worker: queue, send what is due, record outcomes; wakes on published events and
/// at least every second (retries come due with time).
pub struct Worker {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub config: watch::Receiver<Arc<Config>>,
    pub events: broadcast::Receiver<Arc<PublishedEvent>>,
    pub metrics: ApiMetrics,
}

impl Worker {
    pub async fn run(mut self, cancel: CancellationToken) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        loop {
            if let Err(error) = self.step(&client).await {
                tracing::error!(error = %crate::error::error_chain(&error), "webhook delivery step failed; retrying");
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                received = self.events.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = received {
                        break;
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One pass: queue new events, send every due delivery, record the outcomes.
    pub async fn step(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
    ) -> Result<(), StoreError> {
        let webhooks = self.config.borrow().webhooks.clone();
        if webhooks.is_empty() {
            return Ok(());
        }
        // Every configured webhook's series exist at 0 before its first delivery.
        for webhook in &webhooks {
            for result in crate::metrics::WEBHOOK_RESULTS {
                self.metrics.webhook_deliveries.with_label_values(&[&webhook.name, result]);
            }
        }
        let now = self.clock.now();
        let configured = webhooks.clone();
        self.store.write(move |tx| enqueue(tx, &configured, now)).await?;
        loop {
            let now = self.clock.now();
            let batch = self.store.read(move |conn| store_webhooks::due(conn, now, 32)).await?;
            if batch.is_empty() {
                break;
            }
            let mut attempts = tokio::task::JoinSet::new();
            let mut orphaned = Vec::new();
            for delivery in batch {
                let Some(webhook) = webhooks.iter().find(|w| w.name == delivery.webhook).cloned()
                else {
                    // Removed from the config: its deliveries wait until it comes back.
                    orphaned.push(delivery.id);
                    continue;
                };
                let client = client.clone();
                attempts.spawn(async move {
                    let attempt = send(&client, &webhook, &delivery, now).await;
                    (webhook, delivery.attempts, attempt)
                });
            }
            let mut outcomes = Vec::new();
            while let Some(joined) = attempts.join_next().await {
                if let Ok(outcome) = joined {
                    outcomes.push(outcome);
                }
            }
            let sent = outcomes.len();
            let metrics = self.metrics.clone();
            let now = self.clock.now();
            self.store.write(move |tx| record(tx, &outcomes, &orphaned, &metrics, now)).await?;
            if sent == 0 {
                break;
            }
        }
        let pending = self.store.read(store_webhooks::pending_count).await?;
        self.metrics.webhook_pending.set(pending);
        Ok(())
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    webhook: &WebhookConfig,
    delivery: &Due,
    now: DateTime<Utc>,
) -> Attempt {
    let failed = |status: Option<u16>, error: String| Attempt {
        delivery_id: delivery.id,
        status,
        error: Some(error),
    };
    let event: serde_json::Value = match serde_json::from_str(&delivery.payload) {
        Ok(event) => event,
        Err(error) => return failed(None, format!("corrupt outbox payload: {error}")),
    };
    let body = serde_json::json!({
        "id": delivery.event_id,
        "kind": delivery.kind,
        "created_at": from_millis(delivery.created_at).map(|time| time.to_rfc3339()),
        "event": event,
    })
    .to_string();
    let timestamp = now.timestamp();
    let request = hyper::Request::post(&webhook.url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("workspaced/", env!("CARGO_PKG_VERSION")))
        .header("Idempotency-Key", delivery.event_id.to_string())
        .header("X-Workspaced-Event", &delivery.kind)
        .header("X-Workspaced-Delivery", delivery.id.to_string())
        .header("X-Workspaced-Timestamp", timestamp.to_string())
        .header("X-Workspaced-Signature", signature(&webhook.secret, timestamp, body.as_bytes()))
        .body(Full::new(Bytes::from(body)));
    let request = match request {
        Ok(request) => request,
        Err(error) => return failed(None, format!("cannot build the request: {error}")),
    };
    match tokio::time::timeout(webhook.timeout.as_duration(), client.request(request)).await {
        Err(_) => failed(None, format!("no response within {}", webhook.timeout)),
        Ok(Err(error)) => failed(None, crate::error::error_chain(&error)),
        Ok(Ok(response)) => {
            let status = response.status();
            // Read (and drop) the body so the connection can be reused; bounded by the timeout.
            let _ =
                tokio::time::timeout(webhook.timeout.as_duration(), response.into_body().collect())
                    .await;
            if status.is_success() {
                Attempt { delivery_id: delivery.id, status: Some(status.as_u16()), error: None }
            } else {
                failed(Some(status.as_u16()), format!("receiver answered {status}"))
            }
        }
    }
}

fn record(
    conn: &Connection,
    outcomes: &[(WebhookConfig, u32, Attempt)],
    orphaned: &[i64],
    metrics: &ApiMetrics,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for id in orphaned {
        // Look again in a minute.
        store_webhooks::postpone(conn, *id, to_millis(now) + 60_000)?;
    }
    for (webhook, previous_attempts, attempt) in outcomes {
        let attempts = previous_attempts + 1;
        let (status, next) = match &attempt.error {
            None => ("delivered", to_millis(now)),
            Some(_) if attempts >= webhook.max_attempts => ("dead", to_millis(now)),
            Some(_) => {
                let wait = backoff(webhook, attempts);
                ("pending", to_millis(now) + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
            }
        };
        store_webhooks::record_attempt(
            conn,
            &AttemptRecord {
                delivery_id: attempt.delivery_id,
                status,
                attempts,
                next_attempt_at: next,
                last_status: attempt.status,
                last_error: attempt.error.as_deref(),
            },
            now,
        )?;
        let result = match status {
            "delivered" => "delivered",
            "dead" => "dead",
            _ => "retry",
        };
        metrics.webhook_deliveries.with_label_values(&[&webhook.name, result]).inc();
        match (&attempt.error, status) {
            (Some(error), "dead") => tracing::error!(
                webhook = %webhook.name, delivery = attempt.delivery_id, attempts, error = %error,
                "webhook delivery gave up: dead letter (see GET /api/v1/webhooks/deliveries?status=dead)"
            ),
            (Some(error), _) => tracing::warn!(
                webhook = %webhook.name, delivery = attempt.delivery_id, attempts, error = %error,
                "webhook delivery failed; will retry"
            ),
            (None, _) => {
                tracing::debug!(webhook = %webhook.name, delivery = attempt.delivery_id, "webhook delivered")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook() -> WebhookConfig {
        WebhookConfig::example()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let webhook = webhook();
        let waits: Vec<u64> = (1..=6).map(|n| backoff(&webhook, n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(backoff(&webhook, 200).as_secs(), 60);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Expected value computed independently with Python's hmac module.
        let signature = signature("0123456789abcdef", 1_700_000_000, b"{}");
        assert_eq!(
            signature,
            "sha256=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
        assert_ne!(signature, super::signature("0123456789abcdeX", 1_700_000_000, b"{}"));
    }

    #[test]
    fn filters_match_kinds_and_families() {
        let mut webhook = webhook();
        assert!(webhook.wants("build.failed"));
        webhook.events = vec!["build.*".into(), "gc.warning".into()];
        assert!(webhook.wants("build.failed"));
        assert!(webhook.wants("gc.warning"));
        assert!(!webhook.wants("gc.deleted"));
        assert!(!webhook.wants("buildx.failed"));
    }
}
