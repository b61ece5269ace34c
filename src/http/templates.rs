//! API handlers for templates, their versions and presets, a preset's pool status and
//! its reset.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::auth::{Action, Object, Resource};
use crate::domain::DEFAULT_ORGANIZATION_ID;
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body, query};
use crate::planner;
use crate::planner::plan::PresetPlan;
use crate::pools::{self, ResetError};
use crate::store::views::{self, TemplateView};
use crate::store::{snapshot, templates, users};

use crate::http::api::require;

/// A readable live template by id, or by name in `?organization=` (default `default`).
async fn find_template(
    ctx: &Ctx,
    id: String,
    organization: Option<String>,
) -> Result<TemplateView, ApiError> {
    let found = ctx
        .state
        .ctx
        .store
        .read(move |conn| {
            let org = match organization {
                Some(name) => match users::organization(conn, &name)? {
                    Some(org) => org.id,
                    None => return Ok(None),
                },
                None => DEFAULT_ORGANIZATION_ID.to_owned(),
            };
            views::template(conn, &id, &org)
        })
        .await?;
    match found {
        Some(template)
            if ctx.subject.can(
                Action::Read,
                &Object::new(Resource::Template, Some(&template.organization_id), None),
            ) =>
        {
            Ok(template)
        }
        _ => Err(ApiError::not_found("template")),
    }
}

pub async fn list_templates(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    query(request, &[])?;
    let templates = ctx.state.ctx.store.read(views::templates).await?;
    let visible: Vec<_> = templates
        .into_iter()
        .filter(|template| {
            ctx.subject.can(
                Action::Read,
                &Object::new(Resource::Template, Some(&template.organization_id), None),
            )
        })
        .collect();
    json(StatusCode::OK, &json!({ "templates": visible }))
}

pub async fn get_template(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    let parameters = query(request, &["organization"])?;
    let template = find_template(ctx, id, parameters.get("organization").cloned()).await?;
    json(StatusCode::OK, &template)
}

pub async fn template_versions(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    let parameters = query(request, &["organization"])?;
    let template = find_template(ctx, id, parameters.get("organization").cloned()).await?;
    let versions =
        ctx.state.ctx.store.read(move |conn| views::versions(conn, &template.id)).await?;
    json(StatusCode::OK, &json!({ "versions": versions }))
}

/// A preset of the active version with its parameters and pool status.
#[derive(Debug, Serialize)]
struct PresetStatus {
    id: String,
    name: String,
    parameters: BTreeMap<String, String>,
    desired_instances: Option<i64>,
    ttl_s: Option<i64>,
    /// The prebuild pool; `None` for a preset without prebuilds.
    pool: Option<PoolStatus>,
}

#[derive(Debug, Serialize)]
struct PoolStatus {
    desired: u64,
    running: u64,
    eligible: u64,
    in_progress: u64,
    expired: u64,
    extraneous: u64,
    backoff_until: Option<String>,
    hard_limited: bool,
    /// What the next reconcile cycle would do for this preset.
    next_actions: Vec<crate::planner::plan::PoolAction>,
}

impl From<&PresetPlan> for PoolStatus {
    fn from(plan: &PresetPlan) -> Self {
        let state = plan.state;
        PoolStatus {
            desired: state.desired,
            running: state.actual,
            eligible: state.eligible,
            in_progress: state.starting + state.stopping + state.deleting,
            expired: state.expired,
            extraneous: state.extraneous,
            backoff_until: plan.backoff_until.map(|time| time.to_rfc3339()),
            hard_limited: plan.hard_limited,
            next_actions: plan.actions.clone(),
        }
    }
}

pub async fn template_presets(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    let parameters = query(request, &["organization"])?;
    let template = find_template(ctx, id, parameters.get("organization").cloned()).await?;
    let Some(version_id) = template.active_version_id.clone() else {
        return json(StatusCode::OK, &json!({ "presets": [] }));
    };
    let settings = ctx.state.ctx.config.borrow().planner_settings();
    let now = ctx.now;
    let template_id = template.id.clone();
    let (rows, plan) = ctx
        .state
        .ctx
        .store
        .read(move |conn| {
            let rows = views::presets(conn, &version_id)?;
            let mut with_parameters = Vec::new();
            for row in rows {
                let parameters = templates::preset_parameters(conn, &row.id)?;
                with_parameters.push((row, parameters));
            }
            // This template's pools only: the request costs what the template holds.
            let snapshot = snapshot::pool_snapshot(conn, now, settings, &template_id)?;
            let index = planner::snapshot::Index::new(&snapshot);
            Ok((with_parameters, planner::reconcile::plan(&index)))
        })
        .await?;
    let presets: Vec<PresetStatus> = rows
        .into_iter()
        .map(|(row, parameters)| {
            let pool = plan.presets.iter().find(|p| p.preset_id == row.id).map(PoolStatus::from);
            PresetStatus {
                id: row.id,
                name: row.name,
                parameters,
                desired_instances: row.desired_instances,
                ttl_s: row.ttl_s,
                pool,
            }
        })
        .collect();
    json(StatusCode::OK, &json!({ "template_id": template.id, "presets": presets }))
}

pub async fn reset_preset(ctx: &Ctx, request: Request<Incoming>, reference: String) -> ApiResult {
    let organization = query(&request, &["organization"])?.get("organization").cloned();
    let owner = ctx
        .state
        .ctx
        .store
        .read(move |conn| {
            let Some(id) =
                crate::store::presets::resolve(conn, &reference, organization.as_deref())?
            else {
                return Ok(None);
            };
            Ok(views::preset_owner(conn, &id)?.map(|owner| (id, owner)))
        })
        .await?;
    let Some((id, (organization_id, _template_id))) = owner else {
        return Err(ApiError::not_found("preset"));
    };
    let object = Object::new(Resource::Preset, Some(&organization_id), None);
    if !ctx.subject.can(Action::Read, &object) {
        return Err(ApiError::not_found("preset"));
    }
    require(ctx.subject.can(Action::Update, &object), "reset this preset")?;
    let _: serde::de::IgnoredAny = json_body(ctx, request).await?;
    let (actor, now) = (ctx.actor.clone(), ctx.now);
    let report = ctx
        .state
        .ctx
        .store
        .write(move |tx| pools::reset_preset(tx, &id, None, &actor, now))
        .await
        .map_err(|error| match error {
            ResetError::UnknownPreset(_) => ApiError::not_found("preset"),
            ResetError::Store(error) => ApiError::from(error),
            ResetError::Build(error) => ApiError::conflict(error.to_string()),
        })?;
    json(
        StatusCode::OK,
        &json!({
            "preset_id": report.preset_id,
            "deletes_queued": report.deletes_queued,
            "previous_status": report.previous_status,
        }),
    )
}
