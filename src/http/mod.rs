//! The HTTP server: hyper over HTTP/1.1 on one listener, serving `/healthz`, `/readyz`,
//! `/metrics` (no token), the JSON API under `/api/v1` (bearer token, see `api`), the
//! status page, and workspace apps under `/@{owner}/{workspace}/apps/{app}/` (`proxy`).
//!
//! Owns accepting, top-level routing and graceful shutdown: on cancellation it stops
//! accepting, ends event streams, lets in-flight requests finish (hyper-util's
//! `GracefulShutdown`) and gives up after the grace period. Handlers never hold the
//! store's writer across an await.

mod accounts;
pub mod api;
mod builds;
mod create;
pub mod limits;
mod operations;
pub mod page;
pub mod proxy;
mod routes;
mod settings;
mod stream;
mod templates;
mod users;
mod workspaces;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::event::PublishedEvent;
use crate::loops::LoopCtx;
use crate::provisioner::runner::Runner;

/// What the handlers need.
pub struct HttpState {
    /// Store, clock, metrics and the live config.
    pub ctx: LoopCtx,
    pub runner: Runner,
    /// Committed events as the publisher delivers them (the event stream follows it).
    pub events: tokio::sync::broadcast::Sender<std::sync::Arc<PublishedEvent>>,
    /// Fires on shutdown: open event streams and log follows end.
    pub shutdown: CancellationToken,
    /// True once the loops run; false again when shutdown starts.
    pub ready: AtomicBool,
    /// Per-token request rate and stream limits.
    pub limits: limits::Limits,
    /// Owns the tasks requests start (streams, bookkeeping): they end with the daemon.
    pub tasks: TaskTracker,
    /// The app proxy's client to workspace apps.
    pub proxy: proxy::Upstream,
}

/// A response body: complete (`full`), a stream the daemon writes (`stream`), or an
/// upstream's body passed through (`proxy`, whose errors end the connection).
pub type Body = BoxBody<Bytes, hyper::Error>;
pub type HttpResponse = Response<Body>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// Serves until `cancel` fires, then drains for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    grace: Duration,
) {
    // Connection tasks, drained on shutdown (hyper-util's GracefulShutdown does not take
    // connections with upgrades, so each connection watches `cancel` itself).
    let connections_open = TaskTracker::new();
    let server = state.ctx.config.borrow().server.clone();
    let max_connections = effective_connection_cap(server.max_connections);
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut refused_logged = false;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Past the cap the connection is closed at once: it costs a descriptor for a
        // moment, not for as long as the client likes.
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            state.ctx.metrics.api.connections_refused.inc();
            if !refused_logged {
                tracing::warn!(
                    max_connections,
                    "connection limit reached; refusing new connections (server.max_connections)"
                );
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        refused_logged = false;
        let open = state.ctx.metrics.api.connections.clone();
        let service_state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let state = Arc::clone(&service_state);
            async move { Ok::<_, Infallible>(route(&state, request, peer).await) }
        });
        let mut builder = http1::Builder::new();
        // Without a timer hyper enforces no header timeout: idle and slow (a byte a
        // second) clients would hold their connection forever.
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(server.header_read_timeout.as_duration());
        // Upgrades: a WebSocket through the app proxy takes the connection over.
        let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let cancel_connection = cancel.clone();
        open.inc();
        tracker.spawn(connections_open.track_future(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = cancel_connection.cancelled() => {
                    // Finish the request in flight, then close (an upgraded tunnel ends
                    // with the daemon's shutdown token).
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(error = %error, "http connection ended with an error");
            }
            open.dec();
            drop(permit);
        }));
    }
    drop(listener);
    tokio::select! {
        () = async {
            connections_open.close();
            connections_open.wait().await;
        } => tracing::debug!("http connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("http connections still open after the grace period"),
    }
}

/// `max_connections`, lowered to leave room for the database, logs and provisioner pipes
/// when the process may open fewer files than that (its soft limit is raised to the hard
/// one first, see `raise_file_limit`).
fn effective_connection_cap(max_connections: usize) -> usize {
    let limit = raise_file_limit();
    let room =
        usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX).max(16);
    if max_connections > room {
        tracing::warn!(
            max_connections,
            file_limit = limit,
            cap = room,
            "server.max_connections is above what the file descriptor limit leaves; capped (raise LimitNOFILE)"
        );
        return room;
    }
    max_connections
}

/// Descriptors kept for everything but connections: SQLite (writer, readers, WAL, shm),
/// the log file, provisioner pipes (three per running job).
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open files to the hard limit (allowed without privileges) and
/// returns the soft limit in force.
fn raise_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                return hard;
            }
            soft
        }
        Err(_) => 1024,
    }
}

async fn route(
    state: &Arc<HttpState>,
    request: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> HttpResponse {
    let path = request.uri().path();
    if path == "/api/v1" || path.starts_with("/api/v1/") {
        return api::handle(state, request, peer).await;
    }
    if path.starts_with(proxy::PREFIX) {
        return proxy::handle(state, request, peer).await;
    }
    if matches!(path, "/" | "/login" | "/logout") {
        return page::handle(state, request).await;
    }
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
        _ => metrics(state).await,
    }
}

async fn readyz(state: &HttpState) -> HttpResponse {
    if !state.ready.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
    }
    let probe = state.ctx.store.read(crate::store::ping).await;
    if let Some(reason) = state.ctx.store.write_failure() {
        // Reads still work, but nothing the daemon decides can be recorded.
        let mut response = Response::new(full(format!("database writes failing: {reason}\n")));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        return response;
    }
    match probe {
        Ok(_) => text(StatusCode::OK, "ready\n"),
        Err(error) => {
            tracing::warn!(error = %crate::error::error_chain(&error), "readiness probe failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}

async fn metrics(state: &HttpState) -> HttpResponse {
    // The store counts its own failures; the counter follows it at every scrape.
    let errors = &state.ctx.metrics.api.store_errors;
    errors.inc_by(state.ctx.store.write_failures().saturating_sub(errors.get()));
    // Thousands of presets make a render take milliseconds: off the async workers.
    let metrics = state.ctx.metrics.clone();
    let rendered =
        tokio::task::spawn_blocking(move || metrics.render()).await.unwrap_or_else(|error| {
            Err(prometheus::Error::Msg(format!("render task failed: {error}")))
        });
    match rendered {
        Ok(body) => {
            let mut response = Response::new(full(body));
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
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `{"error": "..."}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
