//! The app proxy: `/@{owner}/{workspace}/apps/{app}/…` on the daemon's listener forwards
//! HTTP and WebSocket traffic to the app a running workspace reported (its URL), so a
//! published port never has to be opened to anyone else, and use counts as activity.
//!
//! - Who: the token comes from `Authorization: Bearer` or the status page's login cookie.
//!   The authorizer decides (`auth::Action::Connect`: the owner, owners of the
//!   organization, a template admin on a prebuild; never an auditor). An app with
//!   `share = "authenticated"` admits any user who reads the organization. A caller who
//!   may see the workspace but not connect gets 403, one who may not see it 404, a bad
//!   token 401.
//! - Cookie-authenticated requests that a page makes (not a navigation) must come from a
//!   page of the same app (its `Referer` below the app's prefix): another app on the
//!   daemon's origin cannot use the visitor's cookie to reach this one.
//! - What reaches the app: no `Authorization`, no login cookie, no hop-by-hop headers;
//!   `X-Forwarded-For`, `-Proto`, `-Host` and `-Prefix` added; the prefix stripped.
//! - A workspace that does not run, or whose probe fails, answers 503 with its state.
//! - Every proxied request, and WebSocket data (not an idle open socket), is activity
//!   with source `proxy` (one write a minute per workspace, `LoopCtx::admit_activity`).

mod forward;

use std::net::SocketAddr;
use std::sync::Arc;

pub use forward::{RESPONSE_TIMEOUT, Upstream};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::auth::{Action, Object, Resource, Subject};
use crate::domain::activity::ActivitySource;
use crate::domain::{App, AppShare};
use crate::http::{HttpResponse, HttpState, full};
use crate::store::views::{self, WorkspaceView};

/// Paths beginning with this are app paths.
pub const PREFIX: &str = "/@";

/// An app path, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub owner: String,
    pub workspace: String,
    pub app: String,
    /// `/@owner/workspace/apps/app`.
    pub prefix: String,
    /// What follows the prefix (starting with `/`), with the query; `None` when the path
    /// stops at the app name (redirected to the trailing slash).
    pub rest: Option<String>,
}

impl Target {
    pub fn parse(uri: &hyper::Uri) -> Option<Target> {
        let path = uri.path().strip_prefix(PREFIX)?;
        let mut parts = path.splitn(4, '/');
        let (owner, workspace, apps, tail) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let (app, rest) = match tail.split_once('/') {
            Some((app, rest)) => (app, Some(format!("/{rest}"))),
            None => (tail, None),
        };
        if apps != "apps" || [owner, workspace, app].iter().any(|part| part.is_empty()) {
            return None;
        }
        let query = uri.query().map(|query| format!("?{query}")).unwrap_or_default();
        Some(Target {
            owner: owner.to_owned(),
            workspace: workspace.to_owned(),
            app: app.to_owned(),
            prefix: format!("{PREFIX}{owner}/{workspace}/apps/{app}"),
            rest: rest.map(|rest| format!("{rest}{query}")),
        })
    }
}

/// Whether `subject` may use `app` of the workspace (organization, owner id): Ok, or the
/// refusal status (404 when it may not even see the workspace).
pub fn access(
    subject: &Subject,
    organization: &str,
    owner_id: &str,
    share: AppShare,
) -> Result<(), StatusCode> {
    let workspace = Object::workspace(organization, owner_id);
    let organization_member = || {
        subject.can(Action::Read, &Object::new(Resource::Organization, Some(organization), None))
    };
    if subject.can(Action::Connect, &workspace)
        || (share == AppShare::Authenticated && organization_member())
    {
        return Ok(());
    }
    if subject.can(Action::Read, &workspace) {
        return Err(StatusCode::FORBIDDEN);
    }
    Err(StatusCode::NOT_FOUND)
}

/// For a cookie-authenticated request: whether the browser says a page made it (fetch,
/// an iframe, an image) rather than the user navigating, and that page is not one of
/// this app's. Browsers set `Sec-Fetch-*`; a page cannot forge them.
pub fn cross_app(headers: &hyper::HeaderMap, prefix: &str) -> bool {
    let get = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let navigation = get("sec-fetch-mode").is_none_or(|mode| mode == "navigate")
        && get("sec-fetch-dest").is_none_or(|dest| dest == "document");
    if navigation {
        return false;
    }
    let from_this_app = get(header::REFERER.as_str())
        .and_then(|referer| referer.parse::<hyper::Uri>().ok())
        .is_some_and(|referer| {
            let path = referer.path();
            path == prefix || path.starts_with(&format!("{prefix}/"))
        });
    !from_this_app
}

/// Serves one app-path request.
pub async fn handle(
    state: &Arc<HttpState>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let wants_html = accepts_html(&request);
    let Some(target) = Target::parse(request.uri()) else {
        return refusal(
            StatusCode::NOT_FOUND,
            "no such route: an app is at /@{owner}/{workspace}/apps/{app}/",
            json!({}),
            wants_html,
        );
    };
    let Some(rest) = target.rest.clone() else {
        let query = request.uri().query().map(|query| format!("?{query}")).unwrap_or_default();
        return redirect(&format!("{}/{query}", target.prefix));
    };
    let (subject, by_cookie) = match authenticate(state, &request).await {
        Ok(found) => found,
        Err(response) => return count(state, "unknown", response),
    };
    let (owner, name) = (target.owner.clone(), target.workspace.clone());
    let found =
        state.ctx.store.read(move |conn| views::workspace_by_name(conn, &owner, &name)).await;
    let workspace = match found {
        Ok(Some(workspace)) => workspace,
        Ok(None) => {
            let message = format!("no workspace {}/{}", target.owner, target.workspace);
            return count(
                state,
                "unknown",
                refusal(StatusCode::NOT_FOUND, &message, json!({}), wants_html),
            );
        }
        Err(error) => {
            tracing::warn!(error = %crate::error::error_chain(&error), "app proxy cannot read the workspace");
            let response = refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable",
                json!({}),
                wants_html,
            );
            return count(state, "unknown", response);
        }
    };
    let app = workspace.apps.iter().find(|app| app.name == target.app).cloned();
    let share = app.as_ref().map(|app| app.share).unwrap_or_default();
    if let Err(status) = access(&subject, &workspace.organization_id, &workspace.owner_id, share) {
        let message = if status == StatusCode::NOT_FOUND {
            format!("no workspace {}/{}", target.owner, target.workspace)
        } else {
            format!("{} may not connect to {}/{}", subject.username, target.owner, target.workspace)
        };
        return count(state, "unknown", refusal(status, &message, json!({}), wants_html));
    }
    if by_cookie && cross_app(request.headers(), &target.prefix) {
        let message = "a page outside this app may not use your login to reach it (send Authorization: Bearer, or open the app itself)";
        return count(
            state,
            "unknown",
            refusal(StatusCode::FORBIDDEN, message, json!({}), wants_html),
        );
    }
    if let Some(response) = not_serving(&workspace, wants_html) {
        return count(state, "unknown", response);
    }
    let Some(app) = app else {
        let names: Vec<&str> = workspace.apps.iter().map(|app| app.name.as_str()).collect();
        let message = format!(
            "workspace {}/{} has no app {:?} (apps: {})",
            target.owner,
            target.workspace,
            target.app,
            names.join(", ")
        );
        return count(
            state,
            "unknown",
            refusal(StatusCode::NOT_FOUND, &message, json!({}), wants_html),
        );
    };
    let client_upgrade =
        forward::wants_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    let response =
        forward_to(state, request, peer, &target, &rest, &app, &workspace, client_upgrade).await;
    count(state, &app.name, response)
}

#[allow(clippy::too_many_arguments)]
async fn forward_to(
    state: &Arc<HttpState>,
    request: Request<Incoming>,
    peer: SocketAddr,
    target: &Target,
    rest: &str,
    app: &App,
    workspace: &WorkspaceView,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> HttpResponse {
    let Some(authority) =
        app.url.parse::<hyper::Uri>().ok().and_then(|url| url.authority().cloned())
    else {
        let message = format!("app {:?} has no usable URL ({})", app.name, app.url);
        return refusal(StatusCode::BAD_GATEWAY, &message, json!({}), false);
    };
    let bytes = &state.ctx.metrics.proxy.bytes;
    let (mut parts, body) = request.into_parts();
    let upgrade = client_upgrade.is_some();
    let original_host = parts.headers.get(header::HOST).cloned();
    forward::strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(header::AUTHORIZATION);
    match forward::cookies_without(&parts.headers, crate::http::page::COOKIE_NAME) {
        Some(cookies) => parts.headers.insert(header::COOKIE, cookies),
        None => parts.headers.remove(header::COOKIE),
    };
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            parts.headers.insert(name, value);
        }
    };
    set("x-forwarded-for", &peer.ip().to_string());
    set("x-forwarded-proto", "http");
    set("x-forwarded-prefix", &target.prefix);
    set("host", authority.as_str());
    if let Some(host) = original_host {
        parts.headers.insert("x-forwarded-host", host);
    }
    let Ok(uri) = format!("http://{authority}{rest}").parse::<hyper::Uri>() else {
        return refusal(StatusCode::BAD_REQUEST, "the path is not a valid URI", json!({}), false);
    };
    parts.uri = uri;
    let to_workspace = bytes.with_label_values(&["to_workspace"]);
    let upstream_request =
        Request::from_parts(parts, forward::Metered::new(body, to_workspace.clone()));
    let mut response = match state.proxy.send(upstream_request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(workspace = %workspace.name, app = %app.name, %error, "workspace app did not answer");
            let message = format!("the workspace app {:?} did not answer: {error}", app.name);
            return refusal(
                StatusCode::BAD_GATEWAY,
                &message,
                json!({ "status": workspace.status }),
                false,
            );
        }
    };
    report_use(state, &workspace.id);
    let from_workspace = bytes.with_label_values(&["from_workspace"]);
    if let Some(client_upgrade) = client_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (tunnel_state, id) = (Arc::clone(state), workspace.id.clone());
        let hooks = forward::TunnelHooks {
            to_workspace,
            from_workspace: from_workspace.clone(),
            on_data: Box::new(move || report_use(&tunnel_state, &id)),
        };
        let websockets = state.ctx.metrics.proxy.websockets.clone();
        let shutdown = state.shutdown.clone();
        state.tasks.spawn(async move {
            let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(client), Ok(upstream)) => (client, upstream),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::debug!(%error, "websocket upgrade failed");
                    return;
                }
            };
            websockets.inc();
            tokio::select! {
                _ = forward::tunnel(client, upstream, hooks) => {}
                () = shutdown.cancelled() => {}
            }
            websockets.dec();
        });
    }
    forward::response_to_client(response, from_workspace)
}

/// Proxied use of a workspace: the gate first (no task for a coalesced report).
fn report_use(state: &Arc<HttpState>, workspace_id: &str) {
    if let Some(now) = state.ctx.admit_activity(workspace_id, ActivitySource::Proxy) {
        let (ctx, id) = (state.ctx.clone(), workspace_id.to_owned());
        state
            .tasks
            .spawn(async move { ctx.record_activity(&id, now, ActivitySource::Proxy).await });
    }
}

/// The caller and whether the login cookie (not a bearer token) authenticated it.
async fn authenticate(
    state: &Arc<HttpState>,
    request: &Request<Incoming>,
) -> Result<(Subject, bool), HttpResponse> {
    let html = accepts_html(request);
    let (token, by_cookie) = match request.headers().get(header::AUTHORIZATION) {
        Some(value) => match value.to_str().ok().and_then(|value| value.strip_prefix("Bearer ")) {
            Some(token) => (token.trim().to_owned(), false),
            None => {
                let message = "the Authorization header must be `Bearer <token>`";
                return Err(refusal(StatusCode::UNAUTHORIZED, message, json!({}), html));
            }
        },
        None => match crate::http::page::session_token(request) {
            Some(token) => (token, true),
            None => {
                let message = "log in first (the status page at /login), or send Authorization: Bearer <token>";
                return Err(refusal(StatusCode::UNAUTHORIZED, message, json!({}), html));
            }
        },
    };
    match crate::http::api::authenticate_token(state, token).await {
        Ok((subject, _token_id)) => Ok((subject, by_cookie)),
        Err(Ok(message)) => Err(refusal(StatusCode::UNAUTHORIZED, message, json!({}), html)),
        Err(Err(response)) => Err(response),
    }
}

/// 503 with the state when the workspace does not serve its apps.
fn not_serving(workspace: &WorkspaceView, html: bool) -> Option<HttpResponse> {
    let unhealthy = workspace.health.as_ref().filter(|health| health.status == "unhealthy");
    if workspace.status == "running" && unhealthy.is_none() {
        return None;
    }
    let message = match unhealthy {
        Some(health) if workspace.status == "running" => format!(
            "workspace {}/{} is unhealthy: {}",
            workspace.owner,
            workspace.name,
            health.error.as_deref().unwrap_or("its readiness probe fails")
        ),
        _ => format!(
            "workspace {}/{} is {}, not running",
            workspace.owner, workspace.name, workspace.status
        ),
    };
    let details = json!({
        "status": workspace.status,
        "health": unhealthy.map(|health| &health.status),
    });
    Some(refusal(StatusCode::SERVICE_UNAVAILABLE, &message, details, html))
}

fn accepts_html(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// The proxy's own answer: a small page for a browser, JSON otherwise.
fn refusal(
    status: StatusCode,
    message: &str,
    details: serde_json::Value,
    html: bool,
) -> HttpResponse {
    let (body, content_type) = if html {
        let title = status.canonical_reason().unwrap_or("error");
        let page = format!(
            "<!doctype html><meta charset=utf-8><title>{title}</title><h1>{} {title}</h1><p>{}</p>\n",
            status.as_u16(),
            crate::http::page::escape(message)
        );
        (page, "text/html; charset=utf-8")
    } else {
        let mut body = json!({ "error": message });
        if let (Some(body), Some(details)) = (body.as_object_mut(), details.as_object()) {
            body.extend(details.clone());
        }
        (body.to_string(), "application/json")
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn redirect(location: &str) -> HttpResponse {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn count(state: &HttpState, app: &str, response: HttpResponse) -> HttpResponse {
    state.ctx.metrics.proxy.requests.with_label_values(&[app, response.status().as_str()]).inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn uri(text: &str) -> hyper::Uri {
        text.parse().unwrap()
    }

    #[test]
    fn app_paths_split_into_owner_workspace_app_and_the_rest() {
        let target = Target::parse(&uri("/@ana/dev/apps/web/static/a.js?v=1")).unwrap();
        assert_eq!(
            (target.owner.as_str(), target.workspace.as_str(), target.app.as_str()),
            ("ana", "dev", "web")
        );
        assert_eq!(target.prefix, "/@ana/dev/apps/web");
        assert_eq!(target.rest.as_deref(), Some("/static/a.js?v=1"));
        assert_eq!(Target::parse(&uri("/@ana/dev/apps/web/")).unwrap().rest.as_deref(), Some("/"));
        assert_eq!(Target::parse(&uri("/@ana/dev/apps/web")).unwrap().rest, None);
        for bad in ["/@ana/dev/web/x/", "/@ana/dev/apps/", "/@ana/dev", "/@/dev/apps/web/", "/ana"]
        {
            assert_eq!(Target::parse(&uri(bad)), None, "{bad}");
        }
    }

    fn subject(role: Role) -> Subject {
        Subject { user_id: "me".into(), username: "me".into(), roles: vec![("org".into(), role)] }
    }

    #[test]
    fn who_may_connect() {
        let own = |role| access(&subject(role), "org", "me", AppShare::Owner);
        let other = |role, share| access(&subject(role), "org", "someone", share);
        assert_eq!(own(Role::Member), Ok(()));
        assert_eq!(other(Role::Member, AppShare::Owner), Err(StatusCode::NOT_FOUND));
        assert_eq!(other(Role::Auditor, AppShare::Owner), Err(StatusCode::FORBIDDEN));
        assert_eq!(other(Role::TemplateAdmin, AppShare::Owner), Err(StatusCode::FORBIDDEN));
        assert_eq!(other(Role::Owner, AppShare::Owner), Ok(()));
        assert_eq!(other(Role::Member, AppShare::Authenticated), Ok(()));
        assert_eq!(
            access(&subject(Role::Member), "another-org", "someone", AppShare::Authenticated),
            Err(StatusCode::NOT_FOUND)
        );
        let prebuild = access(
            &subject(Role::TemplateAdmin),
            "org",
            crate::domain::PREBUILDS_USER_ID,
            AppShare::Owner,
        );
        assert_eq!(prebuild, Ok(()));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> hyper::HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (hyper::header::HeaderName::from_static(name), HeaderValue::from_static(value))
            })
            .collect()
    }

    #[test]
    fn a_page_of_another_app_cannot_ride_the_login_cookie() {
        let prefix = "/@ana/dev/apps/web";
        assert!(!cross_app(&headers(&[]), prefix), "no fetch metadata: a client, not a page");
        assert!(!cross_app(
            &headers(&[("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "document")]),
            prefix
        ));
        let fetch = |referer: &'static str| {
            cross_app(
                &headers(&[
                    ("sec-fetch-mode", "cors"),
                    ("sec-fetch-dest", "empty"),
                    ("referer", referer),
                ]),
                prefix,
            )
        };
        assert!(!fetch("http://h:2118/@ana/dev/apps/web/index.html"));
        assert!(fetch("http://h:2118/@bob/evil/apps/web/"));
        assert!(fetch("http://h:2118/@ana/dev/apps/webx/"));
        assert!(cross_app(&headers(&[("sec-fetch-mode", "cors")]), prefix), "no referer");
        assert!(cross_app(
            &headers(&[("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")]),
            prefix
        ));
    }
}
