//! API handlers for users, their tokens and organizations.

use crate::domain::TextEnum;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Action, Object, Resource, Role};
use crate::config::duration::parse_duration;
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body, query};
use crate::store::audit::{self, Entry};
use crate::store::users::MAX_TOKEN_LIFETIME;
use crate::store::{StoreError, templates, users};

use crate::http::api::{page_limit, require, valid_name};

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
