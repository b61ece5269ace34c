//! The provisioner request and the exec backend's JSON-lines response messages: a
//! boundary format, specified in docs/provisioner-protocol.md. Change it only together
//! with that document and `protocol_version`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::job::AcquiredJob;
use crate::domain::{App, BuildReason, LogLevel, Resource, Timing, Transition};

/// Bumped on an incompatible change of the request or the messages.
pub const PROTOCOL_VERSION: u32 = 1;

/// One job, as every backend receives it (the exec backend: one JSON line on stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub protocol_version: u32,
    pub job_id: String,
    pub build_id: String,
    pub build_number: i64,
    pub transition: Transition,
    pub reason: BuildReason,
    pub workspace: WorkspaceMeta,
    pub template: TemplateMeta,
    pub prebuild: PrebuildMeta,
    /// This build's parameter values.
    pub parameters: BTreeMap<String, String>,
    /// The previous build's values (empty for the first build).
    pub previous_parameters: BTreeMap<String, String>,
    /// The opaque state the last successful build returned; null for the first build.
    pub state: Option<String>,
    /// The template version's provisioner settings.
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceMeta {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub owner_name: String,
    pub organization_id: String,
    pub organization_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub id: String,
    pub name: String,
    pub version_id: String,
    pub version_name: String,
}

/// Modelled on Coder's provisioner metadata: whether this build creates a prebuild (owned
/// by the prebuilds system user) or claims one for a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrebuildMeta {
    pub creates: bool,
    pub claims: bool,
    pub preset: Option<String>,
}

impl JobRequest {
    pub fn from_job(job: &AcquiredJob) -> JobRequest {
        JobRequest {
            protocol_version: PROTOCOL_VERSION,
            job_id: job.job_id.clone(),
            build_id: job.build.build_id.clone(),
            build_number: job.build.build_number,
            transition: job.build.transition,
            reason: job.build.reason,
            workspace: WorkspaceMeta {
                id: job.build.workspace_id.clone(),
                name: job.workspace_name.clone(),
                owner_id: job.build.owner_id.clone(),
                owner_name: job.owner_name.clone(),
                organization_id: job.build.organization_id.clone(),
                organization_name: job.organization_name.clone(),
            },
            template: TemplateMeta {
                id: job.template_id.clone(),
                name: job.template_name.clone(),
                version_id: job.template_version_id.clone(),
                version_name: job.template_version_name.clone(),
            },
            prebuild: PrebuildMeta {
                creates: job.is_prebuild,
                claims: job.is_prebuild_claim,
                preset: job.preset_name.clone(),
            },
            parameters: job.parameters.clone(),
            previous_parameters: job.previous_parameters.clone(),
            state: job.previous_state.clone(),
            config: job.provisioner_config.clone(),
        }
    }
}

/// One line the exec backend writes on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    Log {
        #[serde(default = "default_level")]
        level: LogLevel,
        #[serde(default)]
        stage: String,
        output: String,
    },
    Timing {
        stage: String,
        #[serde(default)]
        source: String,
        #[serde(default)]
        action: String,
        #[serde(default)]
        resource: String,
        started_at: chrono::DateTime<chrono::Utc>,
        ended_at: chrono::DateTime<chrono::Utc>,
    },
    Replacement {
        resource: String,
        #[serde(default)]
        paths: Vec<String>,
    },
    Complete {
        #[serde(default)]
        state: Option<String>,
        #[serde(default)]
        resources: Vec<Resource>,
        /// Connection info: `[{"name": "web", "url": "http://127.0.0.1:8080/"}]`.
        #[serde(default)]
        apps: Vec<App>,
        #[serde(default)]
        error: Option<String>,
    },
}

fn default_level() -> LogLevel {
    LogLevel::Info
}

impl Message {
    /// The timing carried by a `timing` message.
    pub fn into_timing(self) -> Option<Timing> {
        match self {
            Message::Timing { stage, source, action, resource, started_at, ended_at } => {
                Some(Timing { stage, source, action, resource, started_at, ended_at })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_with_defaults_and_reject_unknown_fields() {
        let log: Message = serde_json::from_str(r#"{"type":"log","output":"hi"}"#).unwrap();
        assert_eq!(
            log,
            Message::Log { level: LogLevel::Info, stage: String::new(), output: "hi".into() }
        );
        let complete: Message = serde_json::from_str(
            r#"{"type":"complete","state":"s","resources":[{"name":"vm","type":"qemu","agents":[{"name":"a","ready":true}]}]}"#,
        )
        .unwrap();
        assert!(matches!(complete, Message::Complete { resources, .. } if resources.len() == 1));
        assert!(
            serde_json::from_str::<Message>(r#"{"type":"log","output":"x","colour":"red"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Message>(r#"{"type":"explode"}"#).is_err());
    }
}
