//! The status page at `/`: server-rendered HTML, no external assets, readable on a phone.
//! A login form takes an API token and sets it as an HttpOnly, SameSite=Strict cookie
//! (`wsd_session`, also accepted by the API); the page then shows what that user may read:
//! pools with their next actions, workspaces due for lifecycle transitions and GC
//! deletions, recent failed builds, and the loops' health.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::auth::{Action, Object, Resource, Subject};
use crate::domain::LoopKind;
use crate::http::{HttpResponse, HttpState, full};
use crate::store::views::page::{self as page_views, FailedBuild};

pub const COOKIE_NAME: &str = "wsd_session";
/// Largest login form read.
const MAX_FORM_BYTES: usize = 4096;
/// Rows per section at most: the page costs what it shows, not the fleet.
const MAX_ROWS: usize = 50;

/// The token in the request's session cookie, if any.
pub fn session_token(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    response
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:1rem;max-width:70rem;color:#222}}\
         h1{{font-size:1.3rem}}h2{{font-size:1.05rem;margin-top:1.5rem}}\
         .scroll{{overflow-x:auto}}table{{border-collapse:collapse;font-size:.9rem}}\
         th,td{{text-align:left;padding:.25rem .6rem;border-bottom:1px solid #ddd;white-space:nowrap}}\
         .bad{{color:#b00}}.ok{{color:#070}}input{{font-size:1rem;padding:.4rem;width:min(30rem,90%)}}\
         </style></head><body>{body}</body></html>"
    )
}

fn redirect_home(cookie: &str) -> HttpResponse {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.headers_mut().insert(LOCATION, HeaderValue::from_static("/"));
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

fn login_page(status: StatusCode, problem: Option<&str>) -> HttpResponse {
    let problem =
        problem.map(|problem| format!("<p class=bad>{}</p>", escape(problem))).unwrap_or_default();
    let body = format!(
        "<h1>workspaced</h1>{problem}<form method=post action=/login>\
         <p><label for=token>API token</label><br>\
         <input id=token name=token type=password autocomplete=off required></p>\
         <p><button type=submit>Sign in</button></p></form>\
         <p>Issue a token with <code>workspaced token create --user NAME</code>.</p>"
    );
    html(status, document("workspaced: sign in", &body))
}

/// `/`, `/login`, `/logout`.
pub async fn handle(state: &Arc<HttpState>, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path().to_owned();
    match (path.as_str(), request.method().clone()) {
        ("/", Method::GET | Method::HEAD) => {
            let Some(token) = session_token(&request) else {
                return login_page(StatusCode::OK, None);
            };
            match crate::http::api::authenticate_token(state, token).await {
                Ok((subject, _)) => status_page(state, &subject).await,
                Err(Ok(reason)) => login_page(StatusCode::UNAUTHORIZED, Some(reason)),
                Err(Err(response)) => response,
            }
        }
        ("/login", Method::POST) => login(state, request).await,
        ("/logout", Method::POST) => {
            redirect_home(&format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))
        }
        _ => crate::http::json_error(StatusCode::NOT_FOUND, "no such route"),
    }
}

async fn login(state: &Arc<HttpState>, request: Request<Incoming>) -> HttpResponse {
    let body = http_body_util::Limited::new(request.into_body(), MAX_FORM_BYTES);
    let Ok(collected) = body.collect().await else {
        return login_page(StatusCode::PAYLOAD_TOO_LARGE, Some("the form is too large"));
    };
    let bytes = collected.to_bytes();
    let token = form_urlencoded::parse(&bytes)
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    if token.is_empty() {
        return login_page(StatusCode::BAD_REQUEST, Some("enter an API token"));
    }
    match crate::http::api::authenticate_token(state, token.clone()).await {
        Ok(_) => redirect_home(&format!(
            "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"
        )),
        Err(Ok(reason)) => login_page(StatusCode::UNAUTHORIZED, Some(reason)),
        Err(Err(response)) => response,
    }
}

fn table(header: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p>{}</p>", escape(empty));
    }
    let mut out = String::from("<div class=scroll><table><tr>");
    for title in header {
        let _ = write!(out, "<th>{}</th>", escape(title));
    }
    out.push_str("</tr>");
    for row in rows.iter().take(MAX_ROWS) {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></div>");
    if rows.len() > MAX_ROWS {
        let _ = write!(
            out,
            "<p>… and {} more (see <code>workspaced plan</code>)</p>",
            rows.len() - MAX_ROWS
        );
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

async fn status_page(state: &Arc<HttpState>, subject: &Subject) -> HttpResponse {
    let now = state.ctx.clock.now();
    let settings = state.ctx.config.borrow().planner_settings();
    let read = state
        .ctx
        .store
        .read(move |conn| {
            let snapshot = crate::store::snapshot::read(conn, now, settings)?;
            let mut plan = serde_json::to_value(crate::planner::plan(&snapshot))
                .map_err(crate::store::StoreError::Encode)?;
            crate::store::views::names::annotate(conn, &mut plan)?;
            // Who may read what: each workspace's organization and owner.
            let mut owners = std::collections::HashMap::new();
            for workspace in &snapshot.workspaces {
                let template = snapshot.templates.iter().find(|t| t.id == workspace.template_id);
                owners.insert(
                    workspace.id.clone(),
                    (
                        template.map(|t| t.organization_id.clone()).unwrap_or_default(),
                        workspace.owner.user_id().to_owned(),
                    ),
                );
            }
            let presets: std::collections::HashMap<String, String> = snapshot
                .presets
                .iter()
                .filter_map(|preset| {
                    let template =
                        snapshot.templates.iter().find(|t| t.id == preset.template_id)?;
                    Some((preset.id.clone(), template.organization_id.clone()))
                })
                .collect();
            let failed = page_views::recent_failed_builds(conn, MAX_ROWS * 4)?;
            Ok((plan, owners, presets, failed))
        })
        .await;
    let (plan, owners, presets, failed) = match read {
        Ok(read) => read,
        Err(error) => {
            let error = crate::error::error_chain(&error);
            let body = format!(
                "<h1>workspaced</h1><p class=bad>cannot read the database: {}</p>",
                escape(&error)
            );
            return html(StatusCode::SERVICE_UNAVAILABLE, document("workspaced", &body));
        }
    };
    let may_read_workspace = |id: &str| {
        owners.get(id).is_some_and(|(organization, owner)| {
            subject.can(Action::Read, &Object::workspace(organization, owner))
        })
    };
    let mut body = format!(
        "<h1>workspaced</h1><form method=post action=/logout><p>Signed in as <b>{}</b> · {} \
         <button type=submit>Sign out</button></p></form>",
        escape(&subject.username),
        escape(&now.to_rfc3339()),
    );

    // Loop health.
    let loops = &state.ctx.metrics.loops;
    let write_failure = state.ctx.store.write_failure();
    let mut rows = Vec::new();
    for kind in LoopKind::ALL {
        let name = kind.name();
        let last = loops.last_success.with_label_values(&[name]).get();
        let errors = loops.errors.with_label_values(&[name]).get();
        let last = chrono::DateTime::from_timestamp(last, 0)
            .filter(|_| last > 0)
            .map_or("not yet".to_owned(), |time| time.to_rfc3339());
        rows.push(vec![name.to_owned(), last, errors.to_string()]);
    }
    body.push_str("<h2>Loops</h2>");
    if let Some(reason) = write_failure {
        let _ = write!(body, "<p class=bad>database writes failing: {}</p>", escape(&reason));
    }
    body.push_str(&table(&["loop", "last success", "errors"], &rows, ""));

    // Pools.
    let mut rows = Vec::new();
    for preset in plan["reconciler"]["presets"].as_array().into_iter().flatten() {
        let id = preset["preset_id"].as_str().unwrap_or_default();
        let organization = presets.get(id).map(String::as_str).unwrap_or_default();
        if !subject.can(Action::Read, &Object::new(Resource::Preset, Some(organization), None)) {
            continue;
        }
        let state = &preset["state"];
        let status = if preset["hard_limited"] == true {
            "hard-limited".to_owned()
        } else if !preset["backoff_until"].is_null() {
            format!("backoff until {}", text(&preset["backoff_until"]))
        } else {
            "ok".to_owned()
        };
        rows.push(vec![
            format!("{}/{}", text(&preset["template"]), text(&preset["preset"])),
            text(&state["desired"]),
            text(&state["actual"]),
            text(&state["eligible"]),
            text(&state["starting"]),
            status,
            crate::planner::plan::summarize_actions(&preset["actions"]),
        ]);
    }
    body.push_str("<h2>Pools</h2>");
    body.push_str(&table(
        &["pool", "desired", "running", "eligible", "starting", "status", "next"],
        &rows,
        "No prebuild pools.",
    ));

    // Lifecycle.
    let rows: Vec<Vec<String>> = plan["lifecycle"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|decision| {
            may_read_workspace(decision["workspace_id"].as_str().unwrap_or_default())
        })
        .map(|decision| {
            vec![
                format!("{}/{}", text(&decision["owner"]), text(&decision["workspace"])),
                text(&decision["transition"]),
                text(&decision["reason"]),
            ]
        })
        .collect();
    body.push_str("<h2>Due for lifecycle transitions</h2>");
    body.push_str(&table(&["workspace", "transition", "reason"], &rows, "Nothing is due."));

    // GC.
    let rows: Vec<Vec<String>> = plan["gc"]["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|action| action["action"] != "skip")
        .filter(|action| may_read_workspace(action["workspace_id"].as_str().unwrap_or_default()))
        .map(|action| {
            vec![
                format!("{}/{}", text(&action["owner"]), text(&action["workspace"])),
                text(&action["action"]),
                text(&action["deletes_at"]),
            ]
        })
        .collect();
    body.push_str("<h2>GC</h2>");
    body.push_str(&table(
        &["workspace", "action", "deletes at"],
        &rows,
        "Nothing to warn about or delete.",
    ));

    // Failed builds.
    let rows: Vec<Vec<String>> = failed
        .iter()
        .filter(|build: &&FailedBuild| {
            subject.can(Action::Read, &Object::workspace(&build.organization_id, &build.owner_id))
        })
        .map(|build| {
            vec![
                format!("{}/{}", build.owner, build.workspace),
                build.template.clone(),
                format!("#{} {}", build.build_number, build.transition),
                build.completed_at.clone().unwrap_or_default(),
                build.error.clone(),
            ]
        })
        .collect();
    body.push_str("<h2>Recent failed builds</h2>");
    body.push_str(&table(
        &["workspace", "template", "build", "failed at", "error"],
        &rows,
        "None.",
    ));
    html(StatusCode::OK, document("workspaced", &body))
}
