//! The JSON API under `/api/v1`: authentication, routing, request parsing and error
//! mapping. The routing table is `routes`; handlers live in one module per resource.
//!
//! Every route needs `Authorization: Bearer <token>`: 401 without a valid one. Permission
//! checks go through `auth::Subject::can` only; an object the caller may not read is
//! reported as 404 (so other organizations' resources do not leak), one it may read but
//! not change as 403. Errors are `{"error": "...", "field": "..."}`. Request bodies over
//! `api.max_body_bytes` get 413; unknown fields and query parameters are rejected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Subject;
use crate::http::routes::{self, Route};
use crate::http::{HttpResponse, HttpState, full};
use crate::store::StoreError;
use crate::store::audit::Actor;
use crate::store::users::{self, Refused};

/// An API failure: status, message and the offending field, if one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: None }
    }

    pub fn field(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: Some(field.to_owned()) }
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        ApiError::field(StatusCode::BAD_REQUEST, field, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("no such {what}"))
    }

    pub fn forbidden(action: &str) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, format!("not allowed to {action}"))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn into_response(self) -> HttpResponse {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = serde_json::Value::String(field);
        }
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Load and contention pass; a client should come back, not give up.
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}

/// What a 503 asks a client to wait, in seconds.
pub const RETRY_AFTER_SECS: &str = "1";

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %crate::error::error_chain(&error), "api request failed on the database");
        if error.is_transient() {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is busy; retry shortly",
            );
        }
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the daemon's log)")
    }
}

/// An `ApiError` made from a `StoreError` has already logged and mapped it; storage
/// failures of API writes are seen by the store at BEGIN and COMMIT.
impl crate::store::HasStoreError for ApiError {
    fn store_error(&self) -> Option<&StoreError> {
        None
    }
}

pub type ApiResult = Result<HttpResponse, ApiError>;

/// `value` as JSON with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(|error| {
        tracing::error!(error = %error, "cannot encode an API response");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the response")
    })?;
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// What every handler gets: the state, the authenticated caller and the time.
pub struct Ctx {
    pub state: Arc<HttpState>,
    pub subject: Subject,
    /// The id of the token the request came with (limits count per token).
    pub token_id: String,
    /// The caller for audit entries (user and source address).
    pub actor: Actor,
    pub now: DateTime<Utc>,
}

/// Serves one `/api/v1` request and records its metrics.
pub async fn handle(
    state: &Arc<HttpState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let started = tokio::time::Instant::now();
    let (pattern, response) = dispatch(state, request, peer).await;
    let metrics = &state.ctx.metrics.api;
    metrics.requests.with_label_values(&[pattern, response.status().as_str()]).inc();
    metrics.request_duration.with_label_values(&[pattern]).observe(started.elapsed().as_secs_f64());
    response
}

async fn dispatch(
    state: &Arc<HttpState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> (&'static str, HttpResponse) {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> =
        path.trim_start_matches("/api/v1").split('/').filter(|part| !part.is_empty()).collect();
    let Some(route) = Route::parse(&segments) else {
        return ("unknown", ApiError::new(StatusCode::NOT_FOUND, "no such route").into_response());
    };
    let pattern = route.pattern();
    let (subject, token_id) = match authenticate(state, &request).await {
        Ok(authenticated) => authenticated,
        Err(error) => return (pattern, error),
    };
    if let Err(wait) = state.limits.admit(&token_id, tokio::time::Instant::now()) {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests for this token (api.rate_limit); retry in {wait}s"),
        )
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        return (pattern, response);
    }
    if !route.methods().contains(request.method()) {
        let allowed: Vec<&str> = route.methods().iter().map(Method::as_str).collect();
        let mut response =
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
        if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
            response.headers_mut().insert(ALLOW, value);
        }
        return (pattern, response);
    }
    let ctx = Ctx {
        state: Arc::clone(state),
        actor: Actor {
            user_id: Some(subject.user_id.clone()),
            name: subject.username.clone(),
            source_ip: peer.ip().to_string(),
        },
        subject,
        token_id,
        now: state.ctx.clock.now(),
    };
    let result = routes::route_to(ctx, route, request).await;
    (pattern, result.unwrap_or_else(ApiError::into_response))
}

/// The caller, from `Authorization: Bearer <token>`; the 401 response otherwise.
async fn authenticate(
    state: &Arc<HttpState>,
    request: &Request<Incoming>,
) -> Result<(Subject, String), HttpResponse> {
    let unauthorized = |message: &str| {
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    };
    let token = match request.headers().get(AUTHORIZATION) {
        Some(header) => {
            let Some(token) = header.to_str().ok().and_then(|value| value.strip_prefix("Bearer "))
            else {
                return Err(unauthorized("the Authorization header must be `Bearer <token>`"));
            };
            token.trim().to_owned()
        }
        // The status page's login cookie works for the API too.
        None => match crate::http::page::session_token(request) {
            Some(token) => token,
            None => {
                return Err(unauthorized("missing bearer token (Authorization: Bearer <token>)"));
            }
        },
    };
    authenticate_token(state, token).await.map_err(|refusal| match refusal {
        Err(response) => response,
        Ok(message) => unauthorized(message),
    })
}

/// Checks a presented token: the subject and token id, or why not (`Ok(message)` for a
/// refused token, `Err(response)` for a store failure).
pub(super) async fn authenticate_token(
    state: &Arc<HttpState>,
    token: String,
) -> Result<(Subject, String), Result<&'static str, HttpResponse>> {
    let now = state.ctx.clock.now();
    let checked = state.ctx.store.read(move |conn| users::authenticate(conn, &token, now)).await;
    match checked {
        Ok(Ok(authenticated)) => {
            if authenticated.needs_touch {
                let store = state.ctx.store.clone();
                let id = authenticated.token_id.clone();
                // Bookkeeping only: never delays or fails the request.
                state.tasks.spawn(async move {
                    if let Err(error) =
                        store.write(move |tx| users::touch_token(tx, &id, now)).await
                    {
                        tracing::warn!(error = %crate::error::error_chain(&error), "cannot record token use");
                    }
                });
            }
            Ok((authenticated.subject, authenticated.token_id))
        }
        Ok(Err(reason)) => {
            tracing::debug!(?reason, "api token refused");
            Err(Ok(match reason {
                Refused::Expired => "token expired",
                Refused::Revoked => "token revoked",
                Refused::UserNotActive => "user is not active",
                Refused::Malformed | Refused::Unknown | Refused::WrongSecret => "invalid token",
            }))
        }
        Err(error) => Err(Err(ApiError::from(error).into_response())),
    }
}

/// Reads and parses a JSON body: 413 over `api.max_body_bytes`, 400 naming the field for
/// malformed or unknown fields. An empty body is `{}`.
pub async fn json_body<T: DeserializeOwned>(
    ctx: &Ctx,
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let limit = ctx.state.ctx.config.borrow().api.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes (api.max_body_bytes)"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let bytes: Bytes = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(error) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {error}"),
            ));
        }
    };
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        // serde names an unknown field in its message; report its full path as the field.
        let field =
            match message.strip_prefix("unknown field `").and_then(|rest| rest.split_once('`')) {
                Some((name, _)) if path == "." || path.is_empty() => name.to_owned(),
                Some((name, _)) if !path.ends_with(name) => format!("{path}.{name}"),
                _ if path == "." => String::new(),
                _ => path,
            };
        let message = match message.rsplit_once(" at line ") {
            Some((text, _)) => text.to_owned(),
            None => message,
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
            field: (!field.is_empty()).then_some(field),
        }
    })
}

pub fn require(allowed: bool, action: &str) -> Result<(), ApiError> {
    if allowed { Ok(()) } else { Err(ApiError::forbidden(action)) }
}

pub fn valid_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            field,
            format!(
                "{name:?} is not a valid name: 1-64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
            ),
        ))
    }
}

/// `limit` of a list request: default 100, at most 1000.
pub fn page_limit(
    parameters: &std::collections::BTreeMap<String, String>,
) -> Result<usize, ApiError> {
    let limit = parse_param::<usize>(parameters, "limit")?.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit", "use 1 to 1000"));
    }
    Ok(limit)
}

/// The query parameters of a request (`application/x-www-form-urlencoded`); 400 naming
/// the parameter for a malformed escape, an unknown name or a repeated one.
pub fn query(
    request: &Request<Incoming>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    parse_query(request.uri().query().unwrap_or(""), allowed)
}

pub fn parse_query(query: &str, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    // `form_urlencoded` passes malformed escapes through as text; a client that sent one
    // meant something else, so it is refused (strict hex digits: no sign, no space).
    for pair in query.split('&') {
        let bytes = pair.as_bytes();
        for (at, _) in pair.match_indices('%') {
            let escape = bytes.get(at + 1..at + 3);
            if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                return Err(ApiError::bad_request(name, "invalid percent escape"));
            }
        }
    }
    let mut parameters = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name.contains('\u{FFFD}') || value.contains('\u{FFFD}') {
            return Err(ApiError::bad_request(&name, "not UTF-8"));
        }
        if !allowed.contains(&name.as_ref()) {
            let expected = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            return Err(ApiError::bad_request(
                &name,
                format!("unknown query parameter {name:?}; expected: {expected}"),
            ));
        }
        if parameters.insert(name.clone().into_owned(), value.into_owned()).is_some() {
            return Err(ApiError::bad_request(&name, "given more than once"));
        }
    }
    Ok(parameters)
}

/// A query parameter parsed as `T`, 400 naming it when malformed.
pub fn parse_param<T: std::str::FromStr>(
    parameters: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    parameters
        .get(name)
        .map(|value| {
            value
                .parse()
                .map_err(|_| ApiError::bad_request(name, format!("invalid value {value:?}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_strictly() {
        let all = ["a", "b"];
        let parsed = parse_query("a=x%20y+z&b=", &all).unwrap();
        assert_eq!(parsed["a"], "x y z");
        assert_eq!(parsed["b"], "");
        assert!(parse_query("", &all).unwrap().is_empty());
        for (bad, field) in [
            ("a=%2", "a"),
            ("a=%zz", "a"),
            ("a=%+1", "a"),
            ("a=%-1", "a"),
            ("a=%ff", "a"),
            ("a=1&a=2", "a"),
            ("c=1", "c"),
        ] {
            let error = parse_query(bad, &all).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field), "{bad}");
        }
    }
}
