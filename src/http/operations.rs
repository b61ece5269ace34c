//! API handlers for operations: the plan, GC runs, the audit log and webhook deliveries.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::auth::{Action, Object, Resource};
use crate::domain::LoopKind;
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body, parse_param, query};
use crate::loops;
use crate::planner;
use crate::store::audit::{self, Entry};
use crate::store::snapshot;
use crate::store::views::{self};

use crate::http::api::require;

pub async fn plan(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    let parameters = query(request, &["now"])?;
    require(
        ctx.subject.can(Action::Read, &Object::new(Resource::System, None, None)),
        "read the plan",
    )?;
    let now = match parameters.get("now") {
        Some(text) => crate::planner::snapshot::rfc3339::parse(text)
            .map_err(|reason| ApiError::bad_request("now", reason))?,
        None => ctx.now,
    };
    let settings = ctx.state.ctx.config.borrow().planner_settings();
    let plan = ctx
        .state
        .ctx
        .store
        .read(move |conn| {
            let snapshot = snapshot::read(conn, now, settings)?;
            let mut plan = serde_json::to_value(planner::plan(&snapshot))
                .map_err(crate::store::StoreError::Encode)?;
            crate::store::views::names::annotate(conn, &mut plan)?;
            Ok(plan)
        })
        .await?;
    json(StatusCode::OK, &plan)
}

pub async fn gc_run(ctx: &Ctx, request: Request<Incoming>) -> ApiResult {
    require(
        ctx.subject.can(Action::Update, &Object::new(Resource::System, None, None)),
        "run the GC",
    )?;
    let _: serde::de::IgnoredAny = json_body(ctx, request).await?;
    if !ctx.state.ctx.config.borrow().gc.enabled {
        return Err(ApiError::conflict("the GC is disabled ([gc] enabled = false)"));
    }
    let (actor, now) = (ctx.actor.clone(), ctx.now);
    ctx.state
        .ctx
        .store
        .write(move |tx| {
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "gc.run",
                    resource_type: "system",
                    resource_id: "gc",
                    organization_id: None,
                    details: json!({}),
                },
                now,
            )
        })
        .await?;
    let report = loops::run_once(LoopKind::Gc, &ctx.state.ctx).await.map_err(|error| {
        tracing::error!(error = %crate::error::error_chain(&error), "gc run requested over the API failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the GC run failed (see the daemon's log)")
    })?;
    json(StatusCode::OK, &json!({ "examined": report.examined, "actions": report.actions }))
}

pub async fn audit(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    let parameters = query(request, &["limit", "before"])?;
    let limit = parse_param::<usize>(&parameters, "limit")?.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit", "use 1 to 1000"));
    }
    let before = parse_param::<i64>(&parameters, "before")?;
    let organizations: Option<Vec<String>> =
        if ctx.subject.can(Action::Read, &Object::new(Resource::AuditLog, None, None)) {
            None
        } else {
            let orgs: Vec<String> = ctx
                .subject
                .roles
                .iter()
                .filter(|(org, _)| {
                    ctx.subject.can(Action::Read, &Object::new(Resource::AuditLog, Some(org), None))
                })
                .map(|(org, _)| org.clone())
                .collect();
            if orgs.is_empty() {
                return Err(ApiError::forbidden("read the audit log"));
            }
            Some(orgs)
        };
    let entries = ctx
        .state
        .ctx
        .store
        .read(move |conn| views::audit(conn, organizations.as_deref(), before, limit))
        .await?;
    json(StatusCode::OK, &json!({ "entries": entries }))
}

pub async fn webhook_deliveries(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    let parameters = query(request, &["status", "limit"])?;
    require(
        ctx.subject.can(Action::Read, &Object::new(Resource::Webhook, None, None)),
        "read webhook deliveries",
    )?;
    let status = parameters.get("status").cloned();
    if let Some(status) = &status
        && !["pending", "delivered", "dead"].contains(&status.as_str())
    {
        return Err(ApiError::bad_request("status", "use pending, delivered or dead"));
    }
    let limit = parse_param::<usize>(&parameters, "limit")?.unwrap_or(100).clamp(1, 1000);
    let deliveries = ctx
        .state
        .ctx
        .store
        .read(move |conn| crate::store::webhooks::deliveries(conn, status.as_deref(), limit))
        .await?;
    json(StatusCode::OK, &json!({ "deliveries": deliveries }))
}
