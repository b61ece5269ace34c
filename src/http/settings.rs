//! API handlers that change a workspace after its creation: its autostart schedule and TTL,
//! its current autostop deadline, and its template version (update to the active one).
//! Each is one write transaction that re-checks the workspace, with its audit entry.

use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Action as Permission;
use crate::domain::{BuildReason, Transition};
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body};
use crate::http::workspaces::{build_error, object, readable};
use crate::lifecycle::{ExtendError, ScheduleError};
use crate::store::audit::{self, Actor, Entry};
use crate::store::builds::{self, BuildRequest};
use crate::store::views::WorkspaceView;
use crate::store::{StoreError, WriteTx};

/// What a settings route changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Schedule,
    Extend,
    Update,
}

impl Setting {
    pub fn parse(text: &str) -> Option<Setting> {
        match text {
            "schedule" => Some(Setting::Schedule),
            "extend" => Some(Setting::Extend),
            "update" => Some(Setting::Update),
            _ => None,
        }
    }

    pub fn pattern(self) -> &'static str {
        match self {
            Setting::Schedule => "/workspaces/{id}/schedule",
            Setting::Extend => "/workspaces/{id}/extend",
            Setting::Update => "/workspaces/{id}/update",
        }
    }
}

/// `autostart_schedule` and `ttl_s`: absent = unchanged, `null` = cleared.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    #[serde(default, deserialize_with = "present")]
    autostart_schedule: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    ttl_s: Option<Option<i64>>,
}

/// Tells a field sent as `null` (Some(None)) from one left out (None).
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    /// The new autostop deadline (RFC 3339).
    deadline: DateTime<Utc>,
}

pub async fn change(
    ctx: &Ctx,
    request: Request<Incoming>,
    id: String,
    setting: Setting,
) -> ApiResult {
    let workspace = readable(ctx, id).await?;
    if !ctx.subject.can(Permission::Update, &object(&workspace)) {
        return Err(ApiError::forbidden("change this workspace"));
    }
    match setting {
        Setting::Schedule => schedule(ctx, &workspace, json_body(ctx, request).await?).await,
        Setting::Extend => extend(ctx, &workspace, json_body(ctx, request).await?).await,
        Setting::Update => {
            let _: serde::de::IgnoredAny = json_body(ctx, request).await?;
            update(ctx, &workspace).await
        }
    }
}

fn audited(
    tx: &WriteTx<'_>,
    actor: &Actor,
    workspace: &(String, String),
    action: &str,
    details: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let entry = Entry {
        action,
        resource_type: "workspace",
        resource_id: &workspace.0,
        organization_id: Some(&workspace.1),
        details,
    };
    audit::record(tx, actor, &entry, now)
}

fn schedule_error(error: ScheduleError) -> ApiError {
    match error {
        ScheduleError::Invalid(reason) if reason.starts_with("ttl_s") => {
            ApiError::bad_request("ttl_s", reason)
        }
        ScheduleError::Invalid(reason) => ApiError::bad_request("autostart_schedule", reason),
        ScheduleError::NotFound(_) => ApiError::not_found("workspace"),
        ScheduleError::Store(error) => ApiError::from(error),
    }
}

async fn schedule(ctx: &Ctx, workspace: &WorkspaceView, body: ScheduleBody) -> ApiResult {
    let (actor, now) = (ctx.actor.clone(), ctx.now);
    let target = (workspace.id.clone(), workspace.organization_id.clone());
    ctx.state
        .ctx
        .store
        .write(move |tx| -> Result<(), ApiError> {
            if let Some(schedule) = &body.autostart_schedule {
                crate::lifecycle::set_autostart_schedule(tx, &target.0, schedule.as_deref())
                    .map_err(schedule_error)?;
            }
            if let Some(ttl) = body.ttl_s {
                crate::lifecycle::set_ttl(tx, &target.0, ttl).map_err(schedule_error)?;
            }
            let details =
                json!({ "autostart_schedule": body.autostart_schedule, "ttl_s": body.ttl_s });
            audited(tx, &actor, &target, "workspace.schedule", details, now)?;
            Ok(())
        })
        .await?;
    let workspace = readable(ctx, workspace.id.clone()).await?;
    json(StatusCode::OK, &workspace)
}

async fn extend(ctx: &Ctx, workspace: &WorkspaceView, body: ExtendBody) -> ApiResult {
    let (actor, now) = (ctx.actor.clone(), ctx.now);
    let target = (workspace.id.clone(), workspace.organization_id.clone());
    let previous = ctx
        .state
        .ctx
        .store
        .write(move |tx| -> Result<DateTime<Utc>, ApiError> {
            let previous = crate::lifecycle::extend_deadline(tx, &target.0, body.deadline, now)
                .map_err(|error| match error {
                    ExtendError::Store(error) => ApiError::from(error),
                    error @ (ExtendError::NotRunning | ExtendError::NoDeadline) => {
                        ApiError::conflict(error.to_string())
                    }
                    error => ApiError::bad_request("deadline", error.to_string()),
                })?;
            let details =
                json!({ "from": previous.to_rfc3339(), "to": body.deadline.to_rfc3339() });
            audited(tx, &actor, &target, "workspace.extend", details, now)?;
            Ok(previous)
        })
        .await?;
    json(
        StatusCode::OK,
        &json!({ "previous_deadline": previous.to_rfc3339(), "deadline": body.deadline.to_rfc3339() }),
    )
}

async fn update(ctx: &Ctx, workspace: &WorkspaceView) -> ApiResult {
    let (actor, now, initiator) = (ctx.actor.clone(), ctx.now, ctx.subject.user_id.clone());
    let target = (workspace.id.clone(), workspace.organization_id.clone());
    let template_id = workspace.template_id.clone();
    let build = ctx
        .state
        .ctx
        .store
        .write(move |tx| -> Result<_, ApiError> {
            let active = crate::store::templates::active_version(tx, &template_id)?
                .ok_or_else(|| ApiError::conflict("the template has no active version"))?;
            let current = builds::latest(tx, &target.0)?.map(|latest| latest.template_version_id);
            if current.as_deref() == Some(active.as_str()) {
                return Err(ApiError::conflict("the workspace is on the active version already"));
            }
            let mut request =
                BuildRequest::new(&target.0, Transition::Start, BuildReason::Initiator, &initiator);
            request.template_version_id = Some(active.clone());
            let build = builds::enqueue(tx, &request, now).map_err(build_error)?;
            let details =
                json!({ "template_version_id": active, "build_number": build.build.build_number });
            audited(tx, &actor, &target, "workspace.update", details, now)?;
            Ok(build)
        })
        .await?;
    crate::http::workspaces::accepted(&build)
}
