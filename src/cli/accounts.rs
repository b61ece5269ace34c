//! `user create` and `token create|list|revoke`: accounts and API tokens from the command
//! line, for the first owner and for automation.

use crate::domain::TextEnum;
use chrono::{DateTime, Utc};

use crate::auth::Role;
use crate::clock::{Clock, SystemClock};
use crate::config::ConfigSource;
use crate::store::StoreError;
use crate::store::{audit, users};

use clap::Subcommand;
use serde_json::json;

use super::{CliError, open_store, print, ws};

fn parse_role(role: &str) -> Result<Role, CliError> {
    Role::parse(role).ok_or_else(|| {
        CliError::Input(format!(
            "--role: unknown role {role:?}; expected owner, template-admin, member or auditor"
        ))
    })
}

/// Creates the user if `create` and missing, grants `role` in `org`; returns the user id.
fn ensure_user(
    tx: &crate::store::WriteTx<'_>,
    name: &str,
    role: Option<Role>,
    org: &str,
    create: bool,
    now: DateTime<Utc>,
) -> Result<String, CliError> {
    let existing = users::id_by_name(tx, name)?;
    let id = match (existing, create) {
        (Some(id), _) => id,
        (None, true) => {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
                });
            if !valid {
                return Err(CliError::Input(format!(
                    "user name {name:?} is invalid: use 1-64 of a-z, 0-9, '-', '_', '.'"
                )));
            }
            let id = users::insert(tx, name, now)?;
            audit::record(
                tx,
                &audit::Actor::system("cli"),
                &audit::Entry {
                    action: "user.create",
                    resource_type: "user",
                    resource_id: &id,
                    organization_id: None,
                    details: serde_json::json!({ "username": name }),
                },
                now,
            )?;
            id
        }
        (None, false) => {
            return Err(CliError::Input(format!(
                "no user {name:?}: create it with `workspaced user create {name} --role member`, or pass --role"
            )));
        }
    };
    if let Some(role) = role {
        let Some(organization) = users::organization(tx, org)? else {
            return Err(CliError::Input(format!("--org: no organization {org:?}")));
        };
        users::grant(tx, &id, &organization.id, role, now)?;
    }
    Ok(id)
}

pub(super) fn user_create(
    source: ConfigSource,
    name: &str,
    role: Option<&str>,
    org: &str,
) -> Result<(), CliError> {
    let role = role.map(parse_role).transpose()?;
    let store = open_store(&source)?;
    let now = SystemClock.now();
    store.write_blocking(|tx| {
        if users::id_by_name(tx, name)?.is_some() {
            return Err(CliError::Input(format!("user {name:?} already exists")));
        }
        ensure_user(tx, name, role, org, true, now)
    })?;
    print(&format!("user {name} created"))
}

pub(super) fn token_create(
    source: ConfigSource,
    user: &str,
    role: Option<&str>,
    org: &str,
    expires: Option<&str>,
    name: &str,
) -> Result<(), CliError> {
    let role = role.map(parse_role).transpose()?;
    let now = SystemClock.now();
    let expires_at = match expires {
        Some(text) => {
            let duration = crate::config::duration::parse_duration(text)
                .map_err(|error| CliError::Input(format!("--expires: {error}")))?;
            if duration > crate::store::users::MAX_TOKEN_LIFETIME {
                return Err(CliError::Input(format!(
                    "--expires: {text} is longer than the longest token lifetime, 3650d"
                )));
            }
            Some(crate::domain::time::after(now, duration.as_secs()))
        }
        None => None,
    };
    let store = open_store(&source)?;
    let issued = store.write_blocking(|tx| {
        let user_id = ensure_user(tx, user, role, org, role.is_some(), now)?;
        let issued = users::create_token(tx, &user_id, name, expires_at, now)?;
        audit::record(
            tx,
            &audit::Actor::system("cli"),
            &audit::Entry {
                action: "token.create",
                resource_type: "token",
                resource_id: &issued.id,
                organization_id: None,
                details: serde_json::json!({ "user": user, "name": name }),
            },
            now,
        )?;
        Ok::<_, CliError>(issued)
    })?;
    // The token alone on stdout, so `TOKEN=$(workspaced token create …)` works.
    print(&issued.token)
}

pub(super) fn token_list(source: ConfigSource, user: Option<&str>) -> Result<(), CliError> {
    let store = open_store(&source)?;
    let tokens = store.read_blocking(|conn| {
        let user_id = match user {
            Some(name) => match users::id_by_name(conn, name)? {
                Some(id) => Some(id),
                None => return Ok(None),
            },
            None => None,
        };
        users::list_tokens(conn, user_id.as_deref(), usize::MAX).map(Some)
    })?;
    let Some(tokens) = tokens else {
        return Err(CliError::Input(format!("--user: no user {:?}", user.unwrap_or_default())));
    };
    let mut lines = vec![format!(
        "{:<32}  {:<16}  {:<16}  {:<25}  {:<25}  {}",
        "ID", "USER", "NAME", "EXPIRES", "LAST USED", "STATE"
    )];
    for token in tokens {
        lines.push(format!(
            "{:<32}  {:<16}  {:<16}  {:<25}  {:<25}  {}",
            token.id,
            token.username,
            token.name,
            token.expires_at.as_deref().unwrap_or("never"),
            token.last_used_at.as_deref().unwrap_or("never"),
            if token.revoked_at.is_some() { "revoked" } else { "active" },
        ));
    }
    print(&lines.join("\n"))
}

pub(super) fn token_revoke(source: ConfigSource, id: &str) -> Result<(), CliError> {
    let store = open_store(&source)?;
    let now = SystemClock.now();
    let found = store.write_blocking(|tx| {
        let found = users::revoke_token(tx, id, now)?;
        if found {
            audit::record(
                tx,
                &audit::Actor::system("cli"),
                &audit::Entry {
                    action: "token.revoke",
                    resource_type: "token",
                    resource_id: id,
                    organization_id: None,
                    details: serde_json::json!({}),
                },
                now,
            )?;
        }
        Ok::<_, StoreError>(found)
    })?;
    if !found {
        return Err(CliError::Input(format!(
            "no token with id {id:?} (see `workspaced token list`)"
        )));
    }
    print(&format!("token {id} revoked"))
}

/// `workspaced user …` subcommands that go through the API (audited as the caller).
#[derive(Debug, Subcommand)]
pub enum UserRemote {
    /// Suspend a user: its tokens stop working, the lifecycle stops its workspaces.
    Suspend {
        name: String,
        #[command(flatten)]
        api: ws::ApiArgs,
    },
    /// Reactivate a suspended user.
    Activate {
        name: String,
        #[command(flatten)]
        api: ws::ApiArgs,
    },
    /// Set the user's roles in an organization (none given: remove them all).
    Roles {
        name: String,
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        api: ws::ApiArgs,
    },
    /// Delete a user who owns no workspace (tokens revoked, name freed).
    Delete {
        name: String,
        #[command(flatten)]
        api: ws::ApiArgs,
    },
}

pub fn user(source: ConfigSource, command: UserRemote) -> Result<(), CliError> {
    let (api, name) = match &command {
        UserRemote::Suspend { name, api }
        | UserRemote::Activate { name, api }
        | UserRemote::Roles { name, api, .. }
        | UserRemote::Delete { name, api } => (api, name.clone()),
    };
    let remote = ws::remote(&source, api)?;
    let path = format!("/users/{}", ws::segment(&name));
    let (answer, done) = match &command {
        UserRemote::Suspend { .. } => {
            (remote.call("POST", &format!("{path}/suspend"), Some(json!({})))?, "suspended")
        }
        UserRemote::Activate { .. } => {
            (remote.call("POST", &format!("{path}/activate"), Some(json!({})))?, "active")
        }
        UserRemote::Roles { roles, org, .. } => {
            let body = ws::strip_nulls(json!({ "roles": roles, "organization": org }));
            (remote.call("PUT", &format!("{path}/roles"), Some(body))?, "roles set")
        }
        UserRemote::Delete { .. } => (remote.call("DELETE", &path, None)?, "deleted"),
    };
    ws::emit(api.output, &answer, |_| format!("user {name}: {done}"))
}
