//! API handlers for a workspace's builds: the list, a build's logs (or their live
//! follow) and cancellation.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::auth::Action as Permission;
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body, parse_param, query};
use crate::http::stream;
use crate::http::workspaces::{object, readable};
use crate::provisioner::runner::Runner;
use crate::store::audit::{self, Entry};
use crate::store::jobs::CancelResult;
use crate::store::views::{self, WorkspaceView};

pub async fn builds(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    let parameters = query(request, &["limit", "before"])?;
    let limit = crate::http::api::page_limit(&parameters)?;
    let before = parse_param::<i64>(&parameters, "before")?;
    let workspace = readable(ctx, id).await?;
    let builds = ctx
        .state
        .ctx
        .store
        .read(move |conn| views::builds(conn, &workspace.id, before, limit))
        .await?;
    // Newest first; `next` is the `before=` of the next (older) page.
    let next = (builds.len() == limit).then(|| builds.last().map(|build| build.build_number));
    json(StatusCode::OK, &json!({ "builds": builds, "next": next.flatten() }))
}

async fn find_build(
    ctx: &Ctx,
    workspace: &WorkspaceView,
    number: &str,
) -> Result<views::BuildView, ApiError> {
    let number: i64 = number.parse().map_err(|_| {
        ApiError::bad_request("build_number", format!("{number:?} is not a build number"))
    })?;
    let workspace_id = workspace.id.clone();
    ctx.state
        .ctx
        .store
        .read(move |conn| views::build(conn, &workspace_id, number))
        .await?
        .ok_or_else(|| ApiError::not_found("build"))
}

pub async fn logs(ctx: &Ctx, request: &Request<Incoming>, id: String, number: String) -> ApiResult {
    let parameters = query(request, &["follow"])?;
    let follow = parse_param::<bool>(&parameters, "follow")?.unwrap_or(false);
    let workspace = readable(ctx, id).await?;
    let build = find_build(ctx, &workspace, &number).await?;
    if follow {
        return stream::follow_logs(ctx, build.job_id);
    }
    let job_id = build.job_id.clone();
    let logs = ctx
        .state
        .ctx
        .store
        .read(move |conn| views::logs_after(conn, &job_id, 0, usize::MAX))
        .await?;
    json(
        StatusCode::OK,
        &json!({ "job_id": build.job_id, "job_status": build.job_status, "logs": logs }),
    )
}

pub async fn cancel(
    ctx: &Ctx,
    request: Request<Incoming>,
    id: String,
    number: String,
) -> ApiResult {
    let workspace = readable(ctx, id).await?;
    if !ctx.subject.can(Permission::Update, &object(&workspace)) {
        return Err(ApiError::forbidden("cancel builds of this workspace"));
    }
    let _: serde::de::IgnoredAny = json_body(ctx, request).await?;
    let build = find_build(ctx, &workspace, &number).await?;
    let runner: &Runner = &ctx.state.runner;
    let (actor, now, organization_id, job_id) =
        (ctx.actor.clone(), ctx.now, workspace.organization_id.clone(), build.job_id.clone());
    let outcome_of = |result: &CancelResult| match result {
        CancelResult::Canceled(_) => Some("canceled"),
        CancelResult::Canceling => Some("canceling"),
        _ => None,
    };
    // The audit entry commits with the cancel, in its transaction.
    let result = runner
        .cancel_recorded(&build.job_id, move |tx, result| {
            let Some(outcome) = outcome_of(result) else { return Ok(()) };
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "build.cancel",
                    resource_type: "job",
                    resource_id: &job_id,
                    organization_id: Some(&organization_id),
                    details: json!({ "outcome": outcome }),
                },
                now,
            )
            .map(|_| ())
        })
        .await?;
    let outcome = match result {
        CancelResult::Canceled(_) => "canceled",
        CancelResult::Canceling => "canceling",
        CancelResult::AlreadyFinished(status) => {
            return Err(ApiError::conflict(format!("the build already finished ({status})")));
        }
        CancelResult::NotFound => return Err(ApiError::not_found("build")),
    };
    json(StatusCode::ACCEPTED, &json!({ "result": outcome }))
}
