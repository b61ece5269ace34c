//! API handlers for users, tokens, organizations, templates, presets and their pools, the
//! plan, GC runs, the audit log and webhook deliveries.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Action, Object, Resource, Role};
use crate::config::duration::parse_duration;
use crate::domain::DEFAULT_ORGANIZATION_ID;
use crate::domain::LoopKind;
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body, parse_param, query};
use crate::loops;
use crate::planner;
use crate::planner::plan::PresetPlan;
use crate::pools::{self, ResetError};
use crate::store::audit::{self, Entry};
use crate::store::users::MAX_TOKEN_LIFETIME;
use crate::store::views::{self, TemplateView};
use crate::store::{StoreError, snapshot, templates, users};

fn require(allowed: bool, action: &str) -> Result<(), ApiError> {
    if allowed { Ok(()) } else { Err(ApiError::forbidden(action)) }
}

pub(crate) fn valid_name(field: &str, name: &str) -> Result<(), ApiError> {
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

// ---- users ----

pub async fn list_users(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    let parameters = query(request, &["limit", "after"])?;
    require(ctx.subject.can(Action::Read, &Object::new(Resource::User, None, None)), "list users")?;
    let limit = page_limit(&parameters)?;
    let after = parameters.get("after").cloned();
    let users =
        ctx.state.ctx.store.read(move |conn| users::list(conn, after.as_deref(), limit)).await?;
    // Keyset paging by username: `next` is the `after=` of the next page.
    let next = (users.len() == limit).then(|| users.last().map(|user| user.username.clone()));
    json(StatusCode::OK, &json!({ "users": users, "next": next.flatten() }))
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

pub async fn get_user(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    query(request, &[])?;
    let user = ctx.state.ctx.store.read(move |conn| users::get(conn, &id)).await?;
    let Some(user) = user else { return Err(ApiError::not_found("user")) };
    let own = user.id == ctx.subject.user_id;
    if !own && !ctx.subject.can(Action::Read, &Object::new(Resource::User, None, None)) {
        return Err(ApiError::not_found("user"));
    }
    json(StatusCode::OK, &user)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGrant {
    /// Organization name or id; default `default`.
    #[serde(default)]
    pub organization: Option<String>,
    pub role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: String,
    #[serde(default)]
    roles: Vec<RoleGrant>,
}

pub async fn create_user(ctx: &Ctx, request: Request<Incoming>) -> ApiResult {
    require(
        ctx.subject.can(Action::Create, &Object::new(Resource::User, None, None)),
        "create users",
    )?;
    let body: CreateUser = json_body(ctx, request).await?;
    valid_name("username", &body.username)?;
    let mut grants = Vec::new();
    for (index, grant) in body.roles.iter().enumerate() {
        let role = Role::parse(&grant.role).ok_or_else(|| {
            ApiError::bad_request(
                &format!("roles[{index}].role"),
                format!(
                    "unknown role {:?}; expected owner, template-admin, member or auditor",
                    grant.role
                ),
            )
        })?;
        grants.push((
            grant.organization.clone().unwrap_or_else(|| "default".to_owned()),
            role,
            index,
        ));
    }
    let (actor, now, username) = (ctx.actor.clone(), ctx.now, body.username.clone());
    let id = ctx
        .state
        .ctx
        .store
        .write(move |tx| -> Result<String, ApiError> {
            if users::id_by_name(tx, &username)?.is_some() {
                return Err(ApiError::field(
                    StatusCode::CONFLICT,
                    "username",
                    format!("user {username:?} already exists"),
                ));
            }
            let id = users::insert(tx, &username, now)?;
            for (organization, role, index) in &grants {
                // An error rolls the whole transaction back: no half-made user.
                let Some(org) = users::organization(tx, organization)? else {
                    return Err(ApiError::bad_request(
                        &format!("roles[{index}].organization"),
                        format!("no organization {organization:?}"),
                    ));
                };
                users::grant(tx, &id, &org.id, *role, now)?;
            }
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "user.create",
                    resource_type: "user",
                    resource_id: &id,
                    organization_id: None,
                    details: json!({ "username": username }),
                },
                now,
            )?;
            Ok(id)
        })
        .await?;
    let user = ctx.state.ctx.store.read(move |conn| users::get(conn, &id)).await?;
    json(StatusCode::CREATED, &user)
}

// ---- tokens ----

pub async fn list_tokens(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    let parameters = query(request, &["user", "limit"])?;
    // The newest `limit` tokens (default 100, at most 1000).
    let limit = page_limit(&parameters)?;
    let everyone = ctx.subject.can(Action::Read, &Object::new(Resource::Token, None, None));
    let user = parameters.get("user").cloned();
    let own = ctx.subject.user_id.clone();
    let tokens = ctx
        .state
        .ctx
        .store
        .read(move |conn| {
            let user_id = match (&user, everyone) {
                (Some(user), true) => match users::get(conn, user)? {
                    Some(found) => Some(found.id),
                    None => return Ok(None),
                },
                (None, true) => None,
                (_, false) => Some(own),
            };
            users::list_tokens(conn, user_id.as_deref(), limit).map(Some)
        })
        .await?;
    let Some(tokens) = tokens else { return Err(ApiError::bad_request("user", "no such user")) };
    json(StatusCode::OK, &json!({ "tokens": tokens }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    user: String,
    #[serde(default)]
    name: String,
    /// `30d`, `12h`; omitted = until revoked.
    #[serde(default)]
    expires_in: Option<String>,
}

pub async fn create_token(ctx: &Ctx, request: Request<Incoming>) -> ApiResult {
    require(
        ctx.subject.can(Action::Create, &Object::new(Resource::Token, None, None)),
        "create tokens",
    )?;
    let body: CreateToken = json_body(ctx, request).await?;
    let expires_at = match &body.expires_in {
        Some(text) => {
            let duration = parse_duration(text)
                .map_err(|error| ApiError::bad_request("expires_in", error.to_string()))?;
            if duration > MAX_TOKEN_LIFETIME {
                return Err(ApiError::bad_request(
                    "expires_in",
                    format!("{text} is longer than the longest token lifetime, 3650d"),
                ));
            }
            Some(crate::domain::time::after(ctx.now, duration.as_secs()))
        }
        None => None,
    };
    let (actor, now) = (ctx.actor.clone(), ctx.now);
    let issued = ctx
        .state
        .ctx
        .store
        .write(move |tx| -> Result<Option<users::IssuedToken>, StoreError> {
            let Some(user) = users::get(tx, &body.user)? else { return Ok(None) };
            let issued = users::create_token(tx, &user.id, &body.name, expires_at, now)?;
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "token.create",
                    resource_type: "token",
                    resource_id: &issued.id,
                    organization_id: None,
                    details: json!({ "user": user.username, "name": body.name }),
                },
                now,
            )?;
            Ok(Some(issued))
        })
        .await?;
    let Some(issued) = issued else { return Err(ApiError::bad_request("user", "no such user")) };
    json(StatusCode::CREATED, &issued)
}

pub async fn revoke_token(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    query(request, &[])?;
    let lookup = id.clone();
    let owner = ctx.state.ctx.store.read(move |conn| users::token_owner(conn, &lookup)).await?;
    let Some(owner) = owner else { return Err(ApiError::not_found("token")) };
    let object = Object::new(Resource::Token, None, Some(&owner));
    if !ctx.subject.can(Action::Read, &object) {
        return Err(ApiError::not_found("token"));
    }
    require(ctx.subject.can(Action::Delete, &object), "revoke this token")?;
    let (actor, now) = (ctx.actor.clone(), ctx.now);
    ctx.state
        .ctx
        .store
        .write(move |tx| {
            users::revoke_token(tx, &id, now)?;
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "token.revoke",
                    resource_type: "token",
                    resource_id: &id,
                    organization_id: None,
                    details: json!({}),
                },
                now,
            )
        })
        .await?;
    json(StatusCode::OK, &json!({ "revoked": true }))
}

// ---- organizations ----

pub async fn list_organizations(ctx: &Ctx, request: &Request<Incoming>) -> ApiResult {
    query(request, &[])?;
    let organizations = ctx.state.ctx.store.read(users::organizations).await?;
    let visible: Vec<_> = organizations
        .into_iter()
        .filter(|org| {
            ctx.subject.can(Action::Read, &Object::new(Resource::Organization, Some(&org.id), None))
        })
        .collect();
    json(StatusCode::OK, &json!({ "organizations": visible }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrganization {
    name: String,
}

pub async fn create_organization(ctx: &Ctx, request: Request<Incoming>) -> ApiResult {
    require(
        ctx.subject.can(Action::Create, &Object::new(Resource::Organization, None, None)),
        "create organizations",
    )?;
    let body: CreateOrganization = json_body(ctx, request).await?;
    valid_name("name", &body.name)?;
    let (actor, now, name) = (ctx.actor.clone(), ctx.now, body.name.clone());
    let created = ctx
        .state
        .ctx
        .store
        .write(move |tx| -> Result<Option<users::Organization>, StoreError> {
            if users::organization(tx, &name)?.is_some() {
                return Ok(None);
            }
            let id = templates::ensure_organization(tx, &name, now)?;
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "organization.create",
                    resource_type: "organization",
                    resource_id: &id,
                    organization_id: Some(&id),
                    details: json!({ "name": name }),
                },
                now,
            )?;
            users::organization(tx, &id)
        })
        .await?;
    match created {
        Some(org) => json(StatusCode::CREATED, &org),
        None => Err(ApiError::field(
            StatusCode::CONFLICT,
            "name",
            format!("organization {:?} already exists", body.name),
        )),
    }
}

// ---- templates and presets ----

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

pub async fn reset_preset(ctx: &Ctx, request: Request<Incoming>, id: String) -> ApiResult {
    let lookup = id.clone();
    let owner = ctx.state.ctx.store.read(move |conn| views::preset_owner(conn, &lookup)).await?;
    let Some((organization_id, _template_id)) = owner else {
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
        .write(move |tx| pools::reset_preset(tx, &id, &actor, now))
        .await
        .map_err(|error| match error {
            ResetError::UnknownPreset(_) => ApiError::not_found("preset"),
            ResetError::Store(error) => ApiError::from(error),
            ResetError::Build(error) => ApiError::conflict(error.to_string()),
        })?;
    json(
        StatusCode::OK,
        &json!({ "deletes_queued": report.deletes_queued, "previous_status": report.previous_status }),
    )
}

// ---- plan, gc, audit, webhooks ----

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
    let snapshot =
        ctx.state.ctx.store.read(move |conn| snapshot::read(conn, now, settings)).await?;
    json(StatusCode::OK, &planner::plan(&snapshot))
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
