//! The HTTP server: hyper over HTTP/1.1 on one listener, serving `/healthz`, `/readyz` and
//! `/metrics` (and the JSON API once it lands).
//!
//! Owns accepting, routing and graceful shutdown: on cancellation it stops accepting, lets
//! in-flight requests finish (hyper-util's `GracefulShutdown`) and gives up after the
//! grace period. Handlers only read; they never hold the store's writer across an await.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::store::Store;

/// What the handlers need.
pub struct HttpState {
    pub store: Store,
    pub metrics: Metrics,
    /// True once the loops run; false again when shutdown starts.
    pub ready: AtomicBool,
}

pub type HttpResponse = Response<Full<Bytes>>;

/// Serves until `cancel` fires, then drains for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(route(&state, request).await) }
        });
        let connection =
            graceful.watch(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        tracker.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("http connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("http connections still open after the grace period"),
    }
}

async fn route(state: &HttpState, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path();
    let allowed = match path {
        "/healthz" | "/readyz" | "/metrics" => "GET, HEAD",
        _ => return json_error(StatusCode::NOT_FOUND, "no such route"),
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(state).await,
        _ => metrics(state),
    }
}

async fn readyz(state: &HttpState) -> HttpResponse {
    if !state.ready.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
    }
    let probe = state
        .store
        .read(|conn| Ok(conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?))
        .await;
    match probe {
        Ok(_) => text(StatusCode::OK, "ready\n"),
        Err(error) => {
            tracing::warn!(error = %crate::loops::error_chain(&error), "readiness probe failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}

fn metrics(state: &HttpState) -> HttpResponse {
    match state.metrics.render() {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(error) => {
            tracing::error!(error = %error, "cannot render metrics");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `{"error": "..."}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
