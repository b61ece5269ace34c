//! `workspaced pool list`: every prebuild pool of a running daemon, over its API, with
//! desired, running, eligible, status and the next reconcile actions.

use clap::Subcommand;
use serde_json::json;

use super::ws::{ApiArgs, emit, remote, text};
use super::{CliError, table};
use crate::config::ConfigSource;

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Every prebuild pool: desired, running, eligible, status and the next actions.
    List,
}

/// `pool list`: every template's presets with their pool status, one row per pool.
pub fn list(source: ConfigSource, api: &ApiArgs) -> Result<(), CliError> {
    let remote = remote(&source, api)?;
    let templates = remote.get("/templates")?;
    let mut pools = Vec::new();
    for template in templates["templates"].as_array().into_iter().flatten() {
        let presets = remote.get(&format!("/templates/{}/presets", text(&template["id"])))?;
        for preset in presets["presets"].as_array().into_iter().flatten() {
            if preset["pool"].is_null() {
                continue;
            }
            let mut pool = preset.clone();
            pool["template"] = template["name"].clone();
            pool["organization"] = template["organization"].clone();
            pools.push(pool);
        }
    }
    let document = json!({ "pools": pools });
    emit(api.output, &document, |_| {
        let rows: Vec<Vec<String>> = pools
            .iter()
            .map(|preset| {
                let pool = &preset["pool"];
                let name = match preset["organization"].as_str() {
                    Some("default") | None => {
                        format!("{}/{}", text(&preset["template"]), text(&preset["name"]))
                    }
                    Some(org) => {
                        format!("{org}:{}/{}", text(&preset["template"]), text(&preset["name"]))
                    }
                };
                let status = if pool["hard_limited"] == true {
                    "hard-limited".to_owned()
                } else if !pool["backoff_until"].is_null() {
                    format!("backoff until {}", text(&pool["backoff_until"]))
                } else {
                    "ok".to_owned()
                };
                let next = crate::planner::plan::summarize_actions(&pool["next_actions"]);
                vec![
                    name,
                    text(&pool["desired"]),
                    text(&pool["running"]),
                    text(&pool["eligible"]),
                    text(&pool["in_progress"]),
                    status,
                    next,
                ]
            })
            .collect();
        table::render(
            &["POOL", "DESIRED", "RUNNING", "ELIGIBLE", "IN PROGRESS", "STATUS", "NEXT"],
            &rows,
        )
    })
}
