//! API handlers for workspaces: create (claiming a ready prebuild when the preset has one),
//! list, get, start, stop, delete, protect, activity, builds, build logs, cancel.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::auth::{Action as Permission, Object};
use crate::domain::activity::ActivitySource;
use crate::domain::{BuildReason, DEFAULT_ORGANIZATION_ID, TextEnum, Transition};
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body, parse_param, query};
use crate::store::audit::{self, Entry};
use crate::store::builds::{self, BuildError, BuildRequest};
use crate::store::views::{self, WorkspaceFilter, WorkspaceView};
use crate::store::{StoreError, users, workspaces};

/// `POST /workspaces/{id}/<action>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Protect,
    Unprotect,
    Activity,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        Some(match text {
            "start" => Action::Start,
            "stop" => Action::Stop,
            "protect" => Action::Protect,
            "unprotect" => Action::Unprotect,
            "activity" => Action::Activity,
            _ => return None,
        })
    }

    pub fn pattern(self) -> &'static str {
        match self {
            Action::Start => "/workspaces/{id}/start",
            Action::Stop => "/workspaces/{id}/stop",
            Action::Protect => "/workspaces/{id}/protect",
            Action::Unprotect => "/workspaces/{id}/unprotect",
            Action::Activity => "/workspaces/{id}/activity",
        }
    }
}

pub(super) fn object(workspace: &WorkspaceView) -> Object<'_> {
    Object::workspace(&workspace.organization_id, &workspace.owner_id)
}

/// A live workspace the caller may read, by id or `OWNER/NAME`; 404 otherwise (whether
/// or not it exists).
pub(super) async fn readable(ctx: &Ctx, id: String) -> Result<WorkspaceView, ApiError> {
    let found = ctx
        .state
        .ctx
        .store
        .read(move |conn| match id.split_once('/') {
            Some((owner, name)) => views::workspace_by_name(conn, owner, name),
            None => views::workspace(conn, &id),
        })
        .await?;
    match found {
        Some(workspace)
            if !workspace.deleted && ctx.subject.can(Permission::Read, &object(&workspace)) =>
        {
            Ok(workspace)
        }
        _ => Err(ApiError::not_found("workspace")),
    }
}

pub(super) fn build_error(error: BuildError) -> ApiError {
    match error {
        BuildError::InProgress { .. } => ApiError::conflict(error.to_string()),
        BuildError::WorkspaceNotFound(_) | BuildError::WorkspaceDeleted(_) => {
            ApiError::not_found("workspace")
        }
        BuildError::NoVersion(_) => ApiError::conflict(error.to_string()),
        BuildError::Parameter(error) => ApiError::bad_request("parameters", error.to_string()),
        BuildError::Store(error) => ApiError::from(error),
    }
}

/// Rows one list request reads at most before it answers with a cursor.
const MAX_SCANNED: usize = 5_000;

pub async fn list(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    let parameters = query(
        request,
        &["owner", "template", "organization", "status", "dormant", "limit", "after"],
    )?;
    let status = parameters.get("status").cloned();
    if let Some(status) = &status
        && !views::STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "status",
            format!("use one of: {}", views::STATUSES.join(", ")),
        ));
    }
    let dormant = parse_param::<bool>(&parameters, "dormant")?;
    let limit = parse_param::<usize>(&parameters, "limit")?.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit", "use 1 to 1000"));
    }
    // The keyset cursor of the previous page's `next`: "<owner id>/<workspace name>".
    let after = match parameters.get("after") {
        Some(cursor) => Some(
            cursor
                .split_once('/')
                .map(|(owner, name)| (owner.to_owned(), name.to_owned()))
                .ok_or_else(|| ApiError::bad_request("after", "not a cursor from `next`"))?,
        ),
        None => None,
    };
    let owner = parameters
        .get("owner")
        .map(|owner| if owner == "me" { ctx.subject.user_id.clone() } else { owner.clone() });
    let template = parameters.get("template").cloned();
    let organization = parameters.get("organization").cloned();
    let found = ctx
        .state
        .ctx
        .store
        .read(move |conn| -> Result<Option<WorkspaceFilter>, StoreError> {
            let owner_id = match &owner {
                Some(owner)
                    if owner == crate::domain::PREBUILDS_USER_ID || owner == "prebuilds" =>
                {
                    Some(crate::domain::PREBUILDS_USER_ID.to_owned())
                }
                Some(owner) => match users::get(conn, owner)? {
                    Some(user) => Some(user.id),
                    None => return Ok(None),
                },
                None => None,
            };
            let template_id = match &template {
                Some(template) => {
                    let org = match &organization {
                        Some(name) => {
                            users::organization(conn, name)?.map(|org| org.id).unwrap_or_default()
                        }
                        None => DEFAULT_ORGANIZATION_ID.to_owned(),
                    };
                    match views::template(conn, template, &org)? {
                        Some(found) => Some(found.id),
                        None => return Ok(None),
                    }
                }
                None => None,
            };
            let filter = WorkspaceFilter { owner_id, template_id, dormant };
            Ok(Some(filter))
        })
        .await?;
    let Some(filter) = found else {
        return json(StatusCode::OK, &json!({ "workspaces": [], "next": null }));
    };
    // Pages are read in chunks in index order and filtered by the authorizer; a request
    // reads at most MAX_SCANNED rows, then hands out a cursor to go on from.
    let subject = ctx.subject.clone();
    let (page, next) = ctx
        .state
        .ctx
        .store
        .read(move |conn| {
            let chunk = (limit * 2).clamp(100, 1000);
            let mut page = Vec::new();
            let mut cursor = after;
            let mut scanned = 0;
            loop {
                let position = cursor.as_ref().map(|(owner, name)| (owner.as_str(), name.as_str()));
                let rows = views::workspaces_after(conn, &filter, position, chunk)?;
                let exhausted = rows.len() < chunk;
                for workspace in rows {
                    scanned += 1;
                    cursor = Some((workspace.owner_id.clone(), workspace.name.clone()));
                    if subject.can(Permission::Read, &object(&workspace))
                        && status.as_deref().is_none_or(|status| workspace.status == status)
                    {
                        page.push(workspace);
                        if page.len() == limit {
                            break;
                        }
                    }
                }
                if page.len() == limit || scanned >= MAX_SCANNED {
                    let next = cursor.map(|(owner, name)| format!("{owner}/{name}"));
                    return Ok((page, next));
                }
                if exhausted {
                    return Ok((page, None));
                }
            }
        })
        .await?;
    json(StatusCode::OK, &json!({ "workspaces": page, "next": next }))
}

pub async fn get(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    query(request, &[])?;
    let workspace = readable(ctx, id).await?;
    json(StatusCode::OK, &workspace)
}

/// Enqueues a build of `transition` for the caller and records it in the audit log.
async fn enqueue(
    ctx: &Ctx,
    workspace: &WorkspaceView,
    transition: Transition,
    refuse_protected: bool,
) -> ApiResult {
    let (actor, now) = (ctx.actor.clone(), ctx.now);
    let (workspace_id, organization_id) = (workspace.id.clone(), workspace.organization_id.clone());
    let authorized_owner = workspace.owner_id.clone();
    let initiator = ctx.subject.user_id.clone();
    let build = ctx
        .state
        .ctx
        .store
        .write(move |tx| -> Result<_, ApiError> {
            // Re-read the owner the caller was authorized against: a prebuild a template
            // admin may delete can have been claimed by a user since.
            let current = workspaces::get(tx, &workspace_id)?.filter(|found| !found.deleted);
            if current.as_ref().map(|found| found.owner_id.as_str())
                != Some(authorized_owner.as_str())
            {
                return Err(ApiError::conflict(
                    "the workspace changed owner (a prebuild was claimed) or was deleted meanwhile; look again",
                ));
            }
            // Re-read: protection may have changed since the request's first read.
            if refuse_protected && current.is_some_and(|found| found.protected) {
                return Err(ApiError::field(
                    StatusCode::CONFLICT,
                    "protected",
                    "the workspace is protected; unprotect it first",
                ));
            }
            let request =
                BuildRequest::new(&workspace_id, transition, BuildReason::Initiator, &initiator);
            let build = builds::enqueue(tx, &request, now).map_err(build_error)?;
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: match transition {
                        Transition::Start => "workspace.start",
                        Transition::Stop => "workspace.stop",
                        Transition::Delete => "workspace.delete",
                    },
                    resource_type: "workspace",
                    resource_id: &workspace_id,
                    organization_id: Some(&organization_id),
                    details: json!({ "build_number": build.build.build_number }),
                },
                now,
            )?;
            Ok(build)
        })
        .await?;
    accepted(&build)
}

/// The 202 answer to a queued build.
pub(super) fn accepted(build: &crate::store::builds::QueuedBuild) -> ApiResult {
    json(
        StatusCode::ACCEPTED,
        &json!({
            "build": {
                "id": build.build.build_id,
                "build_number": build.build.build_number,
                "transition": build.build.transition,
                "job_id": build.build.job_id,
            }
        }),
    )
}

pub async fn delete(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    query(request, &[])?;
    let workspace = readable(ctx, id).await?;
    if !ctx.subject.can_delete(&object(&workspace)) {
        return Err(ApiError::forbidden("delete this workspace"));
    }
    enqueue(ctx, &workspace, Transition::Delete, true).await
}

pub async fn act(ctx: &Ctx, request: Request<Incoming>, id: String, action: Action) -> ApiResult {
    let workspace = readable(ctx, id).await?;
    if !ctx.subject.can(Permission::Update, &object(&workspace)) {
        return Err(ApiError::forbidden("change this workspace"));
    }
    let _: serde::de::IgnoredAny = json_body(ctx, request).await?;
    match action {
        Action::Start => enqueue(ctx, &workspace, Transition::Start, false).await,
        Action::Stop => enqueue(ctx, &workspace, Transition::Stop, false).await,
        Action::Protect | Action::Unprotect => {
            let protected = action == Action::Protect;
            let (actor, now, workspace_id, organization_id) = (
                ctx.actor.clone(),
                ctx.now,
                workspace.id.clone(),
                workspace.organization_id.clone(),
            );
            ctx.state
                .ctx
                .store
                .write(move |tx| {
                    workspaces::set_protected(tx, &workspace_id, protected, now)?;
                    audit::record(
                        tx,
                        &actor,
                        &Entry {
                            action: if protected {
                                "workspace.protect"
                            } else {
                                "workspace.unprotect"
                            },
                            resource_type: "workspace",
                            resource_id: &workspace_id,
                            organization_id: Some(&organization_id),
                            details: json!({}),
                        },
                        now,
                    )
                })
                .await?;
            json(StatusCode::OK, &json!({ "protected": protected }))
        }
        Action::Activity => {
            let (now, workspace_id) = (ctx.now, workspace.id.clone());
            let (actor, organization_id) = (ctx.actor.clone(), workspace.organization_id.clone());
            let activity = ctx
                .state
                .ctx
                .store
                .write(move |tx| {
                    let activity = crate::store::lifecycle::report_activity(
                        tx,
                        &workspace_id,
                        now,
                        ActivitySource::Api,
                    )?;
                    // Audited when it was recorded (at most once a minute per workspace, as
                    // the write itself): who kept the workspace alive, and from where.
                    if let crate::store::lifecycle::Activity::Recorded { deadline_extended } =
                        activity
                    {
                        audit::record(
                            tx,
                            &actor,
                            &Entry {
                                action: "workspace.activity",
                                resource_type: "workspace",
                                resource_id: &workspace_id,
                                organization_id: Some(&organization_id),
                                details: json!({ "deadline_extended": deadline_extended }),
                            },
                            now,
                        )?;
                    }
                    Ok::<_, StoreError>(activity)
                })
                .await;
            let reports = &ctx.state.ctx.metrics.proxy.activity_reports;
            let activity = activity.inspect_err(|_| {
                reports.with_label_values(&[ActivitySource::Api.as_str(), "failed"]).inc();
            })?;
            let result = match activity {
                crate::store::lifecycle::Activity::Recorded { .. } => "recorded",
                _ => "coalesced",
            };
            reports.with_label_values(&[ActivitySource::Api.as_str(), result]).inc();
            let (recorded, extended) = match activity {
                crate::store::lifecycle::Activity::Recorded { deadline_extended } => {
                    (true, deadline_extended)
                }
                crate::store::lifecycle::Activity::Coalesced => (false, false),
                crate::store::lifecycle::Activity::NotFound => {
                    return Err(ApiError::not_found("workspace"));
                }
            };
            json(StatusCode::OK, &json!({ "recorded": recorded, "deadline_extended": extended }))
        }
    }
}
