//! API handlers that change a user: suspend, reactivate, delete, set roles. Each is one
//! write transaction with its audit entry; only who may manage users (owners of the
//! default organization) gets through.

use crate::domain::TextEnum;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Action, Object, Resource, Role};
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body, query, require};
use crate::store::audit::{self, Entry};
use crate::store::users;

/// What a user route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    Suspend,
    Activate,
}

impl UserChange {
    pub fn parse(text: &str) -> Option<UserChange> {
        match text {
            "suspend" => Some(UserChange::Suspend),
            "activate" => Some(UserChange::Activate),
            _ => None,
        }
    }
}

/// The user `id` (id or name) for a change by the caller; 404 when unknown, 403 when the
/// caller may not manage users, 409 for the caller's own account.
async fn target(ctx: &Ctx, id: String, action: Action, what: &str) -> Result<String, ApiError> {
    let user = ctx.state.ctx.store.read(move |conn| users::get(conn, &id)).await?;
    let Some(user) = user else { return Err(ApiError::not_found("user")) };
    require(ctx.subject.can(action, &Object::new(Resource::User, None, None)), what)?;
    if user.id == ctx.subject.user_id {
        return Err(ApiError::conflict(format!("you cannot {what} your own account")));
    }
    Ok(user.id)
}

fn entry<'a>(action: &'a str, id: &'a str, details: serde_json::Value) -> Entry<'a> {
    Entry { action, resource_type: "user", resource_id: id, organization_id: None, details }
}

/// `POST /users/{id}/suspend|activate`: a suspended user's tokens stop working and the
/// lifecycle stops their started workspaces; reactivating undoes the first.
pub async fn change_status(
    ctx: &Ctx,
    request: Request<Incoming>,
    id: String,
    change: UserChange,
) -> ApiResult {
    let (status, verb) = match change {
        UserChange::Suspend => ("suspended", "suspend"),
        UserChange::Activate => ("active", "reactivate"),
    };
    let id = target(ctx, id, Action::Update, verb).await?;
    let _: serde::de::IgnoredAny = json_body(ctx, request).await?;
    let (actor, now, user) = (ctx.actor.clone(), ctx.now, id.clone());
    ctx.state
        .ctx
        .store
        .write(move |tx| {
            users::set_status(tx, &user, status, now)?;
            let action = if status == "active" { "user.activated" } else { "user.suspended" };
            audit::record(tx, &actor, &entry(action, &user, json!({})), now)
        })
        .await?;
    let user = ctx.state.ctx.store.read(move |conn| users::get(conn, &id)).await?;
    json(StatusCode::OK, &user)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRoles {
    /// Organization name or id; default `default`.
    #[serde(default)]
    organization: Option<String>,
    roles: Vec<String>,
}

/// `PUT /users/{id}/roles` `{organization?, roles}`: the user's roles in that organization
/// become exactly `roles` (`[]` removes them all).
pub async fn set_roles(ctx: &Ctx, request: Request<Incoming>, id: String) -> ApiResult {
    let id = target(ctx, id, Action::Update, "change the roles of").await?;
    let body: SetRoles = json_body(ctx, request).await?;
    let mut roles = Vec::new();
    for (index, role) in body.roles.iter().enumerate() {
        roles.push(Role::parse(role).ok_or_else(|| {
            ApiError::bad_request(
                &format!("roles[{index}]"),
                format!("unknown role {role:?}; expected owner, template-admin, member or auditor"),
            )
        })?);
    }
    let organization = body.organization.unwrap_or_else(|| "default".to_owned());
    let (actor, now, user) = (ctx.actor.clone(), ctx.now, id.clone());
    ctx.state
        .ctx
        .store
        .write(move |tx| -> Result<(), ApiError> {
            let Some(org) = users::organization(tx, &organization)? else {
                return Err(ApiError::bad_request(
                    "organization",
                    format!("no organization {organization:?}"),
                ));
            };
            users::set_roles(tx, &user, &org.id, &roles, now)?;
            let names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
            let details = json!({ "organization": org.name, "roles": names });
            audit::record(tx, &actor, &entry("user.roles_changed", &user, details), now)?;
            Ok(())
        })
        .await?;
    let user = ctx.state.ctx.store.read(move |conn| users::get(conn, &id)).await?;
    json(StatusCode::OK, &user)
}

/// `DELETE /users/{id}`: only a user without live workspaces (409 names how many); the row
/// stays for history, tokens are revoked and the name is freed.
pub async fn delete(ctx: &Ctx, request: &Request<Incoming>, id: String) -> ApiResult {
    query(request, &[])?;
    let id = target(ctx, id, Action::Delete, "delete").await?;
    let (actor, now) = (ctx.actor.clone(), ctx.now);
    ctx.state
        .ctx
        .store
        .write(move |tx| -> Result<(), ApiError> {
            let live = users::live_workspaces(tx, &id)?;
            if live > 0 {
                return Err(ApiError::conflict(format!(
                    "the user owns {live} workspace(s); delete or transfer them first"
                )));
            }
            users::retire(tx, &id, now)?;
            audit::record(tx, &actor, &entry("user.deleted", &id, json!({})), now)?;
            Ok(())
        })
        .await?;
    json(StatusCode::OK, &json!({ "deleted": true }))
}
