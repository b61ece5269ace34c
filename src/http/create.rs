//! `POST /workspaces`: a workspace from a template preset, served by claiming a ready
//! prebuild or by a new build, resolved, authorized and written in one transaction.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Action as Permission, Object};
use crate::domain::DEFAULT_ORGANIZATION_ID;
use crate::http::api::{ApiError, ApiResult, Ctx, json, json_body};
use crate::http::workspaces::build_error;
use crate::pools::{self, ClaimError, ClaimOutcome, ClaimRequest};
use crate::store::users;
use crate::store::views::{self};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateWorkspace {
    /// Template id, or name in `organization`.
    template: String,
    #[serde(default)]
    organization: Option<String>,
    /// Preset id or name (of the template's active version).
    #[serde(default)]
    preset: Option<String>,
    name: String,
    /// Username or id; default: the caller.
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    autostart_schedule: Option<String>,
    #[serde(default)]
    ttl_s: Option<u32>,
}

fn claim_error(error: ClaimError) -> ApiError {
    match error {
        ClaimError::UnknownTemplate(_) => {
            ApiError::field(StatusCode::NOT_FOUND, "template", "no such template")
        }
        ClaimError::UnknownPreset(_) => ApiError::bad_request("preset", error.to_string()),
        ClaimError::Schedule(reason) => ApiError::bad_request("autostart_schedule", reason),
        ClaimError::NameTaken(error) => {
            ApiError::field(StatusCode::CONFLICT, "name", error.to_string())
        }
        ClaimError::Build(error) => build_error(error),
        ClaimError::Store(error) => ApiError::from(error),
    }
}

/// Resolves names to ids, authorizes, and claims or builds — all inside one grouped
/// write transaction, so what was checked is what is written.
/// What the create's write decided.
struct Created {
    outcome: ClaimOutcome,
    apps: Vec<crate::domain::App>,
    owner_id: String,
    organization_id: String,
    template_id: String,
}

fn create_in(
    tx: &mut crate::store::WriteTx<'_>,
    body: CreateWorkspace,
    subject: &crate::auth::Subject,
    actor: &crate::store::audit::Actor,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Created, ApiError> {
    let not_found = || ApiError::field(StatusCode::NOT_FOUND, "template", "no such template");
    // An organization that does not exist and one the caller has no role in answer alike,
    // so organization names cannot be probed from outside.
    let organization_id = match &body.organization {
        Some(name) => users::organization(tx, name)?
            .map(|organization| organization.id)
            .filter(|id| subject.roles.iter().any(|(organization, _)| organization == id))
            .ok_or_else(not_found)?,
        None => DEFAULT_ORGANIZATION_ID.to_owned(),
    };
    let template = views::template(tx, &body.template, &organization_id)?.ok_or_else(not_found)?;
    let template_object =
        Object::new(crate::auth::Resource::Template, Some(&template.organization_id), None);
    if !subject.can(Permission::Read, &template_object) {
        return Err(not_found());
    }
    let preset_id = match (&body.preset, &template.active_version_id) {
        (Some(preset), Some(version)) => Some(
            views::presets(tx, version)?
                .into_iter()
                .find(|p| &p.id == preset || &p.name == preset)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "preset",
                        format!(
                            "template {:?} has no preset {preset:?} on its active version",
                            template.name
                        ),
                    )
                })?
                .id,
        ),
        _ => None,
    };
    // A workspace's owner belongs to the template's organization; a user of another
    // organization answers exactly like a user that does not exist.
    let owner_id = match &body.owner {
        Some(owner) => {
            users::get(tx, owner)?
                .filter(|user| {
                    user.roles.iter().any(|role| role.organization_id == template.organization_id)
                })
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "owner",
                        format!("no user {owner:?} in the template's organization"),
                    )
                })?
                .id
        }
        None => subject.user_id.clone(),
    };
    if !subject.can(Permission::Create, &Object::workspace(&template.organization_id, &owner_id)) {
        return Err(ApiError::forbidden("create workspaces for this owner"));
    }
    let request = ClaimRequest {
        user_id: owner_id.clone(),
        template_id: template.id.clone(),
        preset_id,
        name: body.name,
        parameters: body.parameters,
        autostart_schedule: body.autostart_schedule,
        ttl_s: body.ttl_s.map(i64::from),
    };
    let outcome = pools::claim_audited(tx, &request, actor, now).map_err(claim_error)?;
    // A claimed prebuild runs already: its apps answer now.
    let apps = match &outcome {
        ClaimOutcome::Claimed { workspace_id, .. } => {
            crate::store::workspaces::apps(tx, workspace_id)?
        }
        ClaimOutcome::Built { .. } => Vec::new(),
    };
    Ok(Created {
        outcome,
        apps,
        owner_id,
        organization_id: template.organization_id,
        template_id: template.id,
    })
}

pub async fn create(ctx: &Ctx, request: Request<Incoming>) -> ApiResult {
    let body: CreateWorkspace = json_body(ctx, request).await?;
    crate::http::api::valid_name("name", &body.name)?;
    let name = body.name.clone();
    let (subject, actor, now) = (ctx.subject.clone(), ctx.actor.clone(), ctx.now);
    let started = tokio::time::Instant::now();
    let Created { outcome, apps, owner_id, organization_id, template_id } = ctx
        .state
        .ctx
        .store
        .write_grouped(move |tx| create_in(tx, body, &subject, &actor, now))
        .await?;
    let (claimed, workspace_id, build) = match outcome {
        ClaimOutcome::Claimed { workspace_id, build } => {
            ctx.state.ctx.metrics.prebuilds.claim_duration.observe(started.elapsed().as_secs_f64());
            (true, workspace_id, build)
        }
        ClaimOutcome::Built { workspace_id, build } => (false, workspace_id, build),
    };
    json(
        StatusCode::CREATED,
        &json!({
            "claimed": claimed,
            "workspace": {
                "id": workspace_id,
                "name": name,
                "owner_id": owner_id,
                "organization_id": organization_id,
                "template_id": template_id,
                "apps": apps,
            },
            "build": {
                "id": build.build.build_id,
                "build_number": build.build.build_number,
                "transition": build.build.transition,
                "reason": build.build.reason,
                "job_id": build.build.job_id,
                "template_version_id": build.template_version_id,
                "parameters": build.parameters,
            },
        }),
    )
}
