//! The `/api/v1` routing table: each path pattern, its methods and its handler, in one
//! place. `segments` are the path parts after `/api/v1`.

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::http::api::{ApiResult, Ctx};
use crate::http::{
    accounts, builds, create, operations, settings, stream, templates, users, workspaces,
};

/// The routes, by path; `segments` are the path parts after `/api/v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Users,
    User(String),
    UserChange(String, accounts::UserChange),
    UserRoles(String),
    Tokens,
    Token(String),
    Organizations,
    Templates,
    Template(String),
    TemplateVersions(String),
    TemplatePresets(String),
    PresetReset(String),
    Workspaces,
    Workspace(String),
    WorkspaceAction(String, workspaces::Action),
    WorkspaceSetting(String, settings::Setting),
    WorkspaceBuilds(String),
    BuildLogs(String, String),
    BuildCancel(String, String),
    Plan,
    GcRun,
    Audit,
    Events,
    WebhookDeliveries,
}

impl Route {
    pub fn parse(segments: &[&str]) -> Option<Route> {
        // `/workspaces/OWNER/NAME/...` names a workspace as `/workspaces/{id}/...` does; ids
        // are UUIDs, so a first segment that is not one is an owner.
        if let ["workspaces", owner, name, rest @ ..] = segments
            && uuid::Uuid::parse_str(owner).is_err()
        {
            let reference = format!("{owner}/{name}");
            let mut rewritten = vec!["workspaces", reference.as_str()];
            rewritten.extend_from_slice(rest);
            return Self::parse_plain(&rewritten);
        }
        Self::parse_plain(segments)
    }

    fn parse_plain(segments: &[&str]) -> Option<Route> {
        let owned = |s: &str| s.to_owned();
        Some(match segments {
            ["users"] => Route::Users,
            ["users", id] => Route::User(owned(id)),
            ["users", id, "roles"] => Route::UserRoles(owned(id)),
            ["users", id, change] => {
                Route::UserChange(owned(id), accounts::UserChange::parse(change)?)
            }
            ["tokens"] => Route::Tokens,
            ["tokens", id] => Route::Token(owned(id)),
            ["organizations"] => Route::Organizations,
            ["templates"] => Route::Templates,
            ["templates", id] => Route::Template(owned(id)),
            ["templates", id, "versions"] => Route::TemplateVersions(owned(id)),
            ["templates", id, "presets"] => Route::TemplatePresets(owned(id)),
            ["presets", id, "reset"] => Route::PresetReset(owned(id)),
            ["presets", template, preset, "reset"] => {
                Route::PresetReset(format!("{template}/{preset}"))
            }
            ["workspaces"] => Route::Workspaces,
            ["workspaces", id] => Route::Workspace(owned(id)),
            ["workspaces", id, "builds"] => Route::WorkspaceBuilds(owned(id)),
            ["workspaces", id, "builds", number, "logs"] => {
                Route::BuildLogs(owned(id), owned(number))
            }
            ["workspaces", id, "builds", number, "cancel"] => {
                Route::BuildCancel(owned(id), owned(number))
            }
            ["workspaces", id, setting] if settings::Setting::parse(setting).is_some() => {
                Route::WorkspaceSetting(owned(id), settings::Setting::parse(setting)?)
            }
            ["workspaces", id, action] => {
                Route::WorkspaceAction(owned(id), workspaces::Action::parse(action)?)
            }
            ["plan"] => Route::Plan,
            ["gc", "run"] => Route::GcRun,
            ["audit"] => Route::Audit,
            ["events"] => Route::Events,
            ["webhooks", "deliveries"] => Route::WebhookDeliveries,
            _ => return None,
        })
    }

    /// The route pattern: the `route` label of the request metrics.
    pub fn pattern(&self) -> &'static str {
        match self {
            Route::Users => "/users",
            Route::User(_) => "/users/{id}",
            Route::UserChange(_, accounts::UserChange::Suspend) => "/users/{id}/suspend",
            Route::UserChange(_, accounts::UserChange::Activate) => "/users/{id}/activate",
            Route::UserRoles(_) => "/users/{id}/roles",
            Route::Tokens => "/tokens",
            Route::Token(_) => "/tokens/{id}",
            Route::Organizations => "/organizations",
            Route::Templates => "/templates",
            Route::Template(_) => "/templates/{id}",
            Route::TemplateVersions(_) => "/templates/{id}/versions",
            Route::TemplatePresets(_) => "/templates/{id}/presets",
            Route::PresetReset(_) => "/presets/{id}/reset",
            Route::Workspaces => "/workspaces",
            Route::Workspace(_) => "/workspaces/{id}",
            Route::WorkspaceAction(_, action) => action.pattern(),
            Route::WorkspaceSetting(_, setting) => setting.pattern(),
            Route::WorkspaceBuilds(_) => "/workspaces/{id}/builds",
            Route::BuildLogs(..) => "/workspaces/{id}/builds/{number}/logs",
            Route::BuildCancel(..) => "/workspaces/{id}/builds/{number}/cancel",
            Route::Plan => "/plan",
            Route::GcRun => "/gc/run",
            Route::Audit => "/audit",
            Route::Events => "/events",
            Route::WebhookDeliveries => "/webhooks/deliveries",
        }
    }

    pub fn methods(&self) -> &'static [Method] {
        const GET: &[Method] = &[Method::GET];
        const POST: &[Method] = &[Method::POST];
        const GET_POST: &[Method] = &[Method::GET, Method::POST];
        const GET_DELETE: &[Method] = &[Method::GET, Method::DELETE];
        const DELETE: &[Method] = &[Method::DELETE];
        match self {
            Route::Users | Route::Tokens | Route::Organizations | Route::Workspaces => GET_POST,
            Route::Token(_) => DELETE,
            Route::Workspace(_) | Route::User(_) => GET_DELETE,
            Route::UserRoles(_) | Route::WorkspaceSetting(_, settings::Setting::Schedule) => {
                &[Method::PUT]
            }
            Route::WorkspaceSetting(..) => POST,
            Route::PresetReset(_)
            | Route::WorkspaceAction(..)
            | Route::BuildCancel(..)
            | Route::GcRun
            | Route::UserChange(..) => POST,
            _ => GET,
        }
    }
}

pub async fn route_to(ctx: Ctx, route: Route, request: Request<Incoming>) -> ApiResult {
    let method = request.method().clone();
    match (route, method) {
        (Route::Users, Method::GET) => users::list_users(&ctx, &request).await,
        (Route::Users, _) => users::create_user(&ctx, request).await,
        (Route::User(id), Method::GET) => users::get_user(&ctx, &request, id).await,
        (Route::User(id), _) => accounts::delete(&ctx, &request, id).await,
        (Route::UserChange(id, change), _) => {
            accounts::change_status(&ctx, request, id, change).await
        }
        (Route::UserRoles(id), _) => accounts::set_roles(&ctx, request, id).await,
        (Route::Tokens, Method::GET) => users::list_tokens(&ctx, &request).await,
        (Route::Tokens, _) => users::create_token(&ctx, request).await,
        (Route::Token(id), _) => users::revoke_token(&ctx, &request, id).await,
        (Route::Organizations, Method::GET) => users::list_organizations(&ctx, &request).await,
        (Route::Organizations, _) => users::create_organization(&ctx, request).await,
        (Route::Templates, _) => templates::list_templates(&ctx, &request).await,
        (Route::Template(id), _) => templates::get_template(&ctx, &request, id).await,
        (Route::TemplateVersions(id), _) => templates::template_versions(&ctx, &request, id).await,
        (Route::TemplatePresets(id), _) => templates::template_presets(&ctx, &request, id).await,
        (Route::PresetReset(id), _) => templates::reset_preset(&ctx, request, id).await,
        (Route::Workspaces, Method::GET) => workspaces::list(&ctx, &request).await,
        (Route::Workspaces, _) => create::create(&ctx, request).await,
        (Route::Workspace(id), Method::GET) => workspaces::get(&ctx, &request, id).await,
        (Route::Workspace(id), _) => workspaces::delete(&ctx, &request, id).await,
        (Route::WorkspaceAction(id, action), _) => workspaces::act(&ctx, request, id, action).await,
        (Route::WorkspaceSetting(id, setting), _) => {
            settings::change(&ctx, request, id, setting).await
        }
        (Route::WorkspaceBuilds(id), _) => builds::builds(&ctx, &request, id).await,
        (Route::BuildLogs(id, number), _) => builds::logs(&ctx, &request, id, number).await,
        (Route::BuildCancel(id, number), _) => builds::cancel(&ctx, request, id, number).await,
        (Route::Plan, _) => operations::plan(&ctx, &request).await,
        (Route::GcRun, _) => operations::gc_run(&ctx, request).await,
        (Route::Audit, _) => operations::audit(&ctx, &request).await,
        (Route::Events, _) => stream::events(&ctx, &request).await,
        (Route::WebhookDeliveries, _) => operations::webhook_deliveries(&ctx, &request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_by_segments() {
        let id = "0b6f4f5c-6f7e-4f4b-9d59-0a8f5d6c1e2a";
        assert_eq!(
            Route::parse(&["workspaces", id, "start"]),
            Some(Route::WorkspaceAction(id.into(), workspaces::Action::Start))
        );
        assert_eq!(Route::parse(&["workspaces", id, "explode"]), None);
        assert_eq!(
            Route::parse(&["workspaces", id, "builds", "3", "logs"]),
            Some(Route::BuildLogs(id.into(), "3".into()))
        );
        assert_eq!(Route::parse(&[]), None);
    }

    #[test]
    fn a_workspace_is_addressed_by_owner_and_name_and_a_preset_by_template_and_name() {
        assert_eq!(
            Route::parse(&["workspaces", "alice", "dev"]),
            Some(Route::Workspace("alice/dev".into()))
        );
        assert_eq!(
            Route::parse(&["workspaces", "alice", "dev", "stop"]),
            Some(Route::WorkspaceAction("alice/dev".into(), workspaces::Action::Stop))
        );
        assert_eq!(
            Route::parse(&["workspaces", "alice", "dev", "builds", "2", "logs"]),
            Some(Route::BuildLogs("alice/dev".into(), "2".into()))
        );
        assert_eq!(Route::parse(&["workspaces", "alice", "dev", "explode"]), None);
        assert_eq!(
            Route::parse(&["presets", "go", "small", "reset"]),
            Some(Route::PresetReset("go/small".into()))
        );
    }
}
