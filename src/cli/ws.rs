//! `workspaced ws …` and `workspaced pool list`: workspaces and pools of a running daemon,
//! over its API (`cli::remote`). Aligned tables by default, `-o json` for scripts.
//! A workspace is `OWNER/NAME`, a workspace id, or `NAME` (one of yours).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::remote::Remote;
use super::{CliError, print, table};
use crate::config::{self, ConfigSource};

/// How the daemon is reached; shared by `ws` and `pool`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The daemon's address [default: from the config's server.listen]
    #[arg(long, global = true, env = "WORKSPACED_URL", value_name = "URL")]
    pub url: Option<String>,
    /// A file holding the API token (WORKSPACED_TOKEN wins when set)
    #[arg(long, global = true, env = "WORKSPACED_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Output: aligned text or JSON (the API's documents)
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum WsCommand {
    /// List workspaces (all you may read; filters narrow it).
    List {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        template: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// One workspace: status, build, deadline, apps, health.
    Show { workspace: String },
    /// Create a workspace (claims a ready prebuild of --preset when there is one).
    Create {
        name: String,
        #[arg(long)]
        template: String,
        #[arg(long)]
        preset: Option<String>,
        #[arg(long)]
        org: Option<String>,
        /// Create it for this user (owners only)
        #[arg(long)]
        owner: Option<String>,
        /// A parameter value, NAME=VALUE (repeatable)
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Follow the build's log until it ends
        #[arg(long)]
        wait: bool,
    },
    /// Start a workspace.
    Start {
        workspace: String,
        #[arg(long)]
        wait: bool,
    },
    /// Stop a workspace.
    Stop {
        workspace: String,
        #[arg(long)]
        wait: bool,
    },
    /// Delete a workspace (refused while it is protected).
    Delete {
        workspace: String,
        #[arg(long)]
        wait: bool,
    },
    /// Print a build's log (default: the latest build); --follow streams it until it ends.
    Logs {
        workspace: String,
        #[arg(long)]
        build: Option<i64>,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Rebuild a workspace on its template's active version.
    Update {
        workspace: String,
        #[arg(long)]
        wait: bool,
    },
    /// Protect a workspace from the GC and from deletes (--off to lift it).
    Protect {
        workspace: String,
        #[arg(long)]
        off: bool,
    },
    /// Move a running workspace's autostop deadline (never past the template's max_ttl).
    Extend {
        workspace: String,
        /// From now, e.g. 2h
        #[arg(long, conflicts_with = "until")]
        by: Option<String>,
        /// An RFC 3339 time
        #[arg(long)]
        until: Option<String>,
    },
    /// Change the autostart schedule and the TTL of the next starts.
    Schedule {
        workspace: String,
        /// A weekly cron, e.g. "CRON_TZ=Europe/Berlin 0 8 * * 1-5"; "off" clears it
        #[arg(long)]
        autostart: Option<String>,
        /// e.g. 8h; "default" falls back to the template's default_ttl
        #[arg(long)]
        ttl: Option<String>,
    },
}

pub(super) fn remote(source: &ConfigSource, api: &ApiArgs) -> Result<Remote, CliError> {
    let config = config::load(source)?;
    Remote::connect(&config, api.url.as_deref(), api.token_file.as_deref())
}

/// A path segment: percent-encoded where needed.
pub(super) fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The API path of `reference`: `OWNER/NAME`, an id, or one of the caller's by name.
fn workspace_path(remote: &Remote, reference: &str) -> Result<String, CliError> {
    if let Some((owner, name)) = reference.split_once('/') {
        return Ok(format!("/workspaces/{}/{}", segment(owner), segment(name)));
    }
    if uuid::Uuid::parse_str(reference).is_ok() {
        return Ok(format!("/workspaces/{reference}"));
    }
    let mut after: Option<String> = None;
    loop {
        let mut path = "/workspaces?owner=me&limit=1000".to_owned();
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={}", segment(cursor)));
        }
        let page = remote.get(&path)?;
        if let Some(found) = page["workspaces"]
            .as_array()
            .and_then(|all| all.iter().find(|workspace| workspace["name"] == reference))
        {
            return Ok(format!("/workspaces/{}", found["id"].as_str().unwrap_or_default()));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => {
                return Err(CliError::Input(format!(
                    "no workspace {reference:?} of yours; name another user's as OWNER/NAME"
                )));
            }
        }
    }
}

pub(super) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

pub(super) fn emit(
    output: Output,
    value: &Value,
    table: impl FnOnce(&Value) -> String,
) -> Result<(), CliError> {
    match output {
        Output::Json => super::print_json(value),
        Output::Table => print(&table(value)),
    }
}

pub fn run(source: ConfigSource, api: &ApiArgs, command: WsCommand) -> Result<(), CliError> {
    let remote = remote(&source, api)?;
    match command {
        WsCommand::List { owner, template, status } => {
            list(&remote, api.output, owner, template, status)
        }
        WsCommand::Show { workspace } => {
            let found = remote.get(&workspace_path(&remote, &workspace)?)?;
            emit(api.output, &found, show_text)
        }
        WsCommand::Create { name, template, preset, org, owner, params, wait } => {
            let mut parameters = BTreeMap::new();
            for pair in &params {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| CliError::Input(format!("--param {pair:?}: use NAME=VALUE")))?;
                parameters.insert(key.to_owned(), value.to_owned());
            }
            let body = json!({
                "name": name, "template": template, "preset": preset,
                "organization": org, "owner": owner, "parameters": parameters,
            });
            let created = remote.call("POST", "/workspaces", Some(strip_nulls(body)))?;
            let path = format!("/workspaces/{}", text(&created["workspace"]["id"]));
            let claimed = created["claimed"] == true;
            emit(api.output, &created, |created| {
                format!(
                    "workspace {name} created{} (build {})",
                    if claimed { " from a ready prebuild" } else { "" },
                    text(&created["build"]["build_number"])
                )
            })?;
            if wait {
                follow(&remote, &path, created["build"]["build_number"].as_i64())?;
            }
            Ok(())
        }
        WsCommand::Start { workspace, wait } => transition(&remote, api, &workspace, "start", wait),
        WsCommand::Stop { workspace, wait } => transition(&remote, api, &workspace, "stop", wait),
        WsCommand::Delete { workspace, wait } => {
            transition(&remote, api, &workspace, "delete", wait)
        }
        WsCommand::Update { workspace, wait } => {
            transition(&remote, api, &workspace, "update", wait)
        }
        WsCommand::Logs { workspace, build, follow: streaming } => {
            let path = workspace_path(&remote, &workspace)?;
            let number = match build {
                Some(number) => number,
                None => latest_build(&remote, &path)?,
            };
            if streaming {
                return follow(&remote, &path, Some(number));
            }
            let logs = remote.get(&format!("{path}/builds/{number}/logs"))?;
            emit(api.output, &logs, |logs| {
                let lines: Vec<String> =
                    logs["logs"].as_array().into_iter().flatten().map(log_line).collect();
                lines.join("\n")
            })
        }
        WsCommand::Protect { workspace, off } => {
            let path = workspace_path(&remote, &workspace)?;
            let action = if off { "unprotect" } else { "protect" };
            let answer = remote.call("POST", &format!("{path}/{action}"), Some(json!({})))?;
            emit(api.output, &answer, |_| format!("{workspace}: {action}ed"))
        }
        WsCommand::Extend { workspace, by, until } => {
            let deadline = match (by, until) {
                (Some(by), _) => {
                    let by = crate::config::duration::parse_duration(&by)
                        .map_err(|error| CliError::Input(format!("--by {by:?}: {error}")))?;
                    let by = chrono::Duration::from_std(by)
                        .map_err(|_| CliError::Input("--by: too long".to_owned()))?;
                    crate::clock::Clock::now(&crate::clock::SystemClock) + by
                }
                (None, Some(until)) => chrono::DateTime::parse_from_rfc3339(&until)
                    .map_err(|_| {
                        CliError::Input(format!("--until {until:?}: not an RFC 3339 time"))
                    })?
                    .with_timezone(&chrono::Utc),
                (None, None) => {
                    return Err(CliError::Input("ws extend: give --by or --until".to_owned()));
                }
            };
            let path = workspace_path(&remote, &workspace)?;
            let body = json!({ "deadline": deadline.to_rfc3339() });
            let answer = remote.call("POST", &format!("{path}/extend"), Some(body))?;
            emit(api.output, &answer, |answer| {
                format!(
                    "{workspace}: autostop at {} (was {})",
                    text(&answer["deadline"]),
                    text(&answer["previous_deadline"])
                )
            })
        }
        WsCommand::Schedule { workspace, autostart, ttl } => {
            let mut body = serde_json::Map::new();
            if let Some(autostart) = autostart {
                let value = if autostart == "off" { Value::Null } else { Value::String(autostart) };
                body.insert("autostart_schedule".into(), value);
            }
            if let Some(ttl) = ttl {
                let value = if ttl == "default" {
                    Value::Null
                } else {
                    let parsed = crate::config::duration::parse_duration(&ttl)
                        .map_err(|error| CliError::Input(format!("--ttl {ttl:?}: {error}")))?;
                    json!(parsed.as_secs())
                };
                body.insert("ttl_s".into(), value);
            }
            if body.is_empty() {
                return Err(CliError::Input(
                    "ws schedule: give --autostart and/or --ttl".to_owned(),
                ));
            }
            let path = workspace_path(&remote, &workspace)?;
            let answer =
                remote.call("PUT", &format!("{path}/schedule"), Some(Value::Object(body)))?;
            emit(api.output, &answer, show_text)
        }
    }
}

pub(super) fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

fn transition(
    remote: &Remote,
    api: &ApiArgs,
    workspace: &str,
    action: &str,
    wait: bool,
) -> Result<(), CliError> {
    let path = workspace_path(remote, workspace)?;
    let answer = if action == "delete" {
        remote.call("DELETE", &path, None)?
    } else {
        remote.call("POST", &format!("{path}/{action}"), Some(json!({})))?
    };
    emit(api.output, &answer, |answer| {
        format!("{workspace}: {action} queued (build {})", text(&answer["build"]["build_number"]))
    })?;
    if wait {
        follow(remote, &path, answer["build"]["build_number"].as_i64())?;
    }
    Ok(())
}

fn latest_build(remote: &Remote, path: &str) -> Result<i64, CliError> {
    let workspace = remote.get(path)?;
    workspace["latest_build"]["build_number"]
        .as_i64()
        .ok_or_else(|| CliError::Input("the workspace has no builds".to_owned()))
}

fn log_line(line: &Value) -> String {
    format!("{} [{}] {}", text(&line["time"]), text(&line["stage"]), text(&line["output"]))
}

/// Streams the build's log to stderr (progress) until it ends; fails when the build did.
fn follow(remote: &Remote, path: &str, number: Option<i64>) -> Result<(), CliError> {
    let number = match number {
        Some(number) => number,
        None => latest_build(remote, path)?,
    };
    let started = std::time::Instant::now();
    remote.follow(&format!("{path}/builds/{number}/logs?follow=true"), |line| {
        eprintln!(
            "{:>6.1}s  [{}] {}",
            started.elapsed().as_secs_f64(),
            text(&line["stage"]),
            text(&line["output"])
        );
    })?;
    let logs = remote.get(&format!("{path}/builds/{number}/logs"))?;
    let status = text(&logs["job_status"]);
    eprintln!("build {number} {status} after {:.1}s", started.elapsed().as_secs_f64());
    if status == "succeeded" { Ok(()) } else { Err(CliError::BuildEnded { number, status }) }
}

fn list(
    remote: &Remote,
    output: Output,
    owner: Option<String>,
    template: Option<String>,
    status: Option<String>,
) -> Result<(), CliError> {
    let mut query = String::from("limit=1000");
    for (key, value) in [("owner", owner), ("template", template), ("status", status)] {
        if let Some(value) = value {
            query.push_str(&format!("&{key}={}", segment(&value)));
        }
    }
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor =
            after.as_ref().map(|next| format!("&after={}", segment(next))).unwrap_or_default();
        let page = remote.get(&format!("/workspaces?{query}{cursor}"))?;
        all.extend(page["workspaces"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    let document = json!({ "workspaces": all });
    emit(output, &document, |_| {
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|workspace| {
                let build = &workspace["latest_build"];
                vec![
                    format!("{}/{}", text(&workspace["owner"]), text(&workspace["name"])),
                    text(&workspace["template"]),
                    text(&workspace["status"]),
                    text(&workspace["health"]["status"]),
                    format!("#{} {}", text(&build["build_number"]), text(&build["transition"])),
                    text(&build["deadline"]),
                    text(&workspace["last_used_at"]),
                ]
            })
            .collect();
        table::render(
            &["WORKSPACE", "TEMPLATE", "STATUS", "HEALTH", "BUILD", "DEADLINE", "LAST USED"],
            &rows,
        )
    })
}

fn show_text(workspace: &Value) -> String {
    let build = &workspace["latest_build"];
    let mut lines = vec![
        format!("workspace:   {}/{}", text(&workspace["owner"]), text(&workspace["name"])),
        format!("id:          {}", text(&workspace["id"])),
        format!("template:    {}", text(&workspace["template"])),
        format!("status:      {}", text(&workspace["status"])),
        format!(
            "build:       #{} {} {}",
            text(&build["build_number"]),
            text(&build["transition"]),
            text(&build["job_status"])
        ),
        format!("deadline:    {}", text(&build["deadline"])),
        format!("autostart:   {}", text(&workspace["autostart_schedule"])),
        format!("ttl_s:       {}", text(&workspace["ttl_s"])),
        format!("protected:   {}", text(&workspace["protected"])),
        format!(
            "last used:   {} (via {})",
            text(&workspace["last_used_at"]),
            workspace["last_used_source"].as_str().unwrap_or("nothing since creation")
        ),
    ];
    if !workspace["health"].is_null() {
        lines.push(format!(
            "health:      {} {}",
            text(&workspace["health"]["status"]),
            workspace["health"]["error"].as_str().unwrap_or("")
        ));
    }
    for app in workspace["apps"].as_array().into_iter().flatten() {
        lines.push(format!("app:         {} {}", text(&app["name"]), text(&app["url"])));
    }
    lines.iter().map(|line| line.trim_end().to_owned()).collect::<Vec<_>>().join("\n")
}
