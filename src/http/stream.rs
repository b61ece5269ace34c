//! Streaming responses: the Server-Sent Events stream of committed events
//! (`GET /api/v1/events`) and build-log following (`…/logs?follow=true`, JSON lines).
//!
//! The event stream replays from the outbox after `Last-Event-ID` (header, or the
//! `last_event_id` query parameter; without one it starts at the newest event), then
//! follows the publisher, skipping ids it already sent, and re-reads the outbox when it
//! falls behind. Only events the caller may read are sent. Streams end on shutdown or when
//! the client goes away.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{broadcast, mpsc};

use crate::auth::{Action, Object, Resource, Subject};
use crate::domain::event::{Event, PublishedEvent};
use crate::http::api::{ApiError, ApiResult, Ctx, parse_param, query};
use crate::http::{HttpResponse, HttpState};
use crate::store::{outbox, views};

/// A response body fed from a channel; the sender sees `closed()` when the client leaves.
struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.receiver.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn streaming(content_type: &'static str) -> (mpsc::Sender<Bytes>, HttpResponse) {
    let (sender, receiver) = mpsc::channel(64);
    let mut response = Response::new(ChannelBody { receiver }.boxed());
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (sender, response)
}

/// Whether `subject` may see `event`.
pub fn visible(subject: &Subject, event: &Event) -> bool {
    match event {
        Event::Notification { user_id: Some(user_id), .. } => *user_id == subject.user_id,
        Event::Notification { user_id: None, organization_id, .. } => subject.can(
            Action::Update,
            &Object::new(Resource::Template, organization_id.as_deref(), None),
        ),
        Event::ConfigApplied { .. } => {
            subject.can(Action::Read, &Object::new(Resource::Template, None, None))
        }
        Event::PresetHardLimited { organization_id, .. } => {
            subject.can(Action::Read, &Object::new(Resource::Preset, Some(organization_id), None))
        }
        other => match (other.organization_id(), other.owner_id()) {
            (Some(org), Some(owner)) => subject.can(Action::Read, &Object::workspace(org, owner)),
            (org, _) => subject.can(Action::Read, &Object::new(Resource::System, org, None)),
        },
    }
}

fn sse_frame(event: &PublishedEvent) -> Option<Bytes> {
    let mut value = serde_json::to_value(&event.event).ok()?;
    if let Some(object) = value.as_object_mut()
        && !event.names.is_null()
    {
        object.insert("names".to_owned(), event.names.clone());
    }
    let data = value.to_string();
    Some(Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", event.id, event.event.kind())))
}

pub async fn events(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    let parameters = query(request, &["last_event_id"])?;
    let header = request
        .headers()
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request("Last-Event-ID", format!("{value:?} is not an event id"))
            })
        })
        .transpose()?;
    let after = match header {
        Some(id) => Some(id),
        None => parse_param::<i64>(&parameters, "last_event_id")?,
    };
    let state = Arc::clone(&ctx.state);
    // Subscribe before reading the outbox, so nothing published in between is missed.
    let live = state.events.subscribe();
    let start = match after {
        Some(id) => id,
        None => state.ctx.store.read(outbox::last_id).await?,
    };
    let slot = stream_slot(ctx)?;
    let (sender, response) = streaming("text/event-stream");
    let subject = ctx.subject.clone();
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        run_event_stream(state, subject, live, start, sender).await;
        drop(slot);
    });
    Ok(response)
}

async fn run_event_stream(
    state: Arc<HttpState>,
    subject: Subject,
    mut live: broadcast::Receiver<Arc<PublishedEvent>>,
    mut last: i64,
    sender: mpsc::Sender<Bytes>,
) {
    let gauge = state.ctx.metrics.api.event_streams.clone();
    gauge.inc();
    let keepalive = state.ctx.config.borrow().api.events_keepalive.as_duration();
    // Tell the client how long to wait before reconnecting.
    let mut open = sender.send(Bytes::from_static(b"retry: 2000\n\n")).await.is_ok();
    if open {
        open = announce_pruned(&state, &mut last, &sender).await;
    }
    if open {
        open = replay(&state, &subject, &mut last, &sender).await;
    }
    while open {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            () = sender.closed() => break,
            received = live.recv() => match received {
                Ok(event) => {
                    if event.id > last {
                        last = event.id;
                        if visible(&subject, &event.event)
                            && let Some(frame) = sse_frame(&event)
                        {
                            open = sender.send(frame).await.is_ok();
                        }
                    }
                }
                // Fell behind the publisher: the outbox has everything.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    open = replay(&state, &subject, &mut last, &sender).await;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = tokio::time::sleep(keepalive) => {
                open = sender.send(Bytes::from_static(b": keepalive\n\n")).await.is_ok();
            }
        }
    }
    gauge.dec();
}

/// A client resuming from an id whose successors were pruned (`retention.events`) hears so
/// in an `error` event naming the oldest id still available, then gets everything from
/// there: a gap is never silent. False when the client left.
async fn announce_pruned(state: &HttpState, last: &mut i64, sender: &mpsc::Sender<Bytes>) -> bool {
    let oldest = match state.ctx.store.read(crate::store::retention::oldest_event).await {
        Ok(oldest) => oldest,
        Err(_) => return true,
    };
    let Some(oldest) = oldest else { return true };
    if oldest <= *last + 1 {
        return true;
    }
    let body = serde_json::json!({
        "error": format!(
            "events {} to {} were pruned (retention.events); resuming from the oldest available, {oldest}",
            *last + 1,
            oldest - 1
        ),
        "oldest_available_id": oldest,
    });
    *last = oldest - 1;
    sender.send(Bytes::from(format!("event: error\ndata: {body}\n\n"))).await.is_ok()
}

/// Sends every committed event after `last` from the outbox; false when the client left.
async fn replay(
    state: &HttpState,
    subject: &Subject,
    last: &mut i64,
    sender: &mpsc::Sender<Bytes>,
) -> bool {
    loop {
        let after = *last;
        let batch = match state.ctx.store.read(move |conn| outbox::after(conn, after, 500)).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(error = %crate::error::error_chain(&error), "event stream cannot read the outbox; closing it");
                return false;
            }
        };
        let count = batch.len();
        for event in batch {
            *last = event.id;
            if visible(subject, &event.event)
                && let Some(frame) = sse_frame(&event)
                && sender.send(frame).await.is_err()
            {
                return false;
            }
        }
        if count < 500 {
            return true;
        }
    }
}

/// A stream slot for the caller's token, or 429 when it has its streams open already.
fn stream_slot(ctx: &Ctx) -> Result<crate::http::limits::StreamSlot, ApiError> {
    ctx.state.limits.open_stream(&ctx.token_id).ok_or_else(|| {
        ApiError::new(
            hyper::StatusCode::TOO_MANY_REQUESTS,
            "this token has its streams open already (api.max_streams_per_token)",
        )
    })
}

/// Streams a job's log lines as JSON lines until the job has finished and every line was
/// sent.
pub fn follow_logs(ctx: &Ctx, job_id: String) -> Result<HttpResponse, ApiError> {
    let slot = stream_slot(ctx)?;
    let (sender, response) = streaming("application/x-ndjson");
    let state = Arc::clone(&ctx.state);
    ctx.state.tasks.spawn(async move {
        let _slot = slot;
        let mut last = 0;
        loop {
            let (id, after) = (job_id.clone(), last);
            let read = state
                .ctx
                .store
                .read(move |conn| {
                    let finished = matches!(
                        crate::store::jobs::status(conn, &id)?,
                        Some((status, _)) if status.is_terminal()
                    );
                    Ok((views::logs_after(conn, &id, after, 500)?, finished))
                })
                .await;
            let (lines, finished) = match read {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(error = %crate::error::error_chain(&error), "log follow cannot read logs; closing it");
                    return;
                }
            };
            let count = lines.len();
            for line in lines {
                last = line.id;
                let Ok(mut text) = serde_json::to_string(&line) else { continue };
                text.push('\n');
                if sender.send(Bytes::from(text)).await.is_err() {
                    return;
                }
            }
            if finished && count == 0 {
                return;
            }
            if count < 500 {
                tokio::select! {
                    () = state.shutdown.cancelled() => return,
                    () = sender.closed() => return,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    });
    Ok(response)
}
