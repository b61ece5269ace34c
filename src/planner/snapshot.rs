//! The snapshot document (planner.md §1): everything the planners decide from, as one
//! JSON document. `workspaced plan --snapshot FILE` reads it; `workspaced snapshot export`
//! and the loops build it from the database.
//!
//! Owns parsing with exact error paths (`workspaces[3].created_at: invalid RFC3339 time
//! "yesterday"`), defaults, and the checks serde cannot make (duplicate ids, unknown
//! references, owners, autostart schedules). Pure: it parses text into values.

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::planner::schedule::CronSchedule;

/// A snapshot that cannot be planned from: the JSON path of the bad field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SnapshotError {
    pub path: String,
    pub reason: String,
}

/// Times read and written as RFC 3339 strings.
pub mod rfc3339 {
    use super::*;

    pub fn format(time: &DateTime<Utc>) -> String {
        time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub fn parse(text: &str) -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(text)
            .map(|time| time.to_utc())
            .map_err(|_| format!("invalid RFC3339 time {text:?}"))
    }

    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// For nullable times: `null` or absent = `None`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            time: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => serializer.serialize_str(&format(time)),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                Some(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }

    /// For optional times that must not be `null` when present.
    pub mod present {
        use super::*;

        pub fn serialize<S: Serializer>(
            time: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            option::serialize(time, serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            let text = String::deserialize(deserializer)?;
            parse(&text).map(Some).map_err(serde::de::Error::custom)
        }
    }
}

/// Deserializes an optional value that may be absent but not `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    #[serde(with = "rfc3339")]
    pub now: DateTime<Utc>,
    #[serde(default)]
    pub settings: Settings,
    pub templates: Vec<Template>,
    pub presets: Vec<Preset>,
    pub workspaces: Vec<Workspace>,
    pub builds: Vec<Build>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub reconciler: ReconcilerSettings,
    /// Absent = GC does not run.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcilerSettings {
    pub backoff_interval_s: u64,
    pub backoff_lookback_s: u64,
    /// 0 disables the hard limit.
    pub failure_hard_limit: u64,
    pub paused: bool,
    /// A running prebuild unhealthy for longer than this is deleted and replaced.
    #[serde(skip_serializing_if = "is_default_unhealthy_replace_after")]
    pub unhealthy_replace_after_s: u64,
}

/// The default `unhealthy_replace_after_s`: ten minutes.
pub const DEFAULT_UNHEALTHY_REPLACE_AFTER_S: u64 = 600;

fn is_default_unhealthy_replace_after(value: &u64) -> bool {
    *value == DEFAULT_UNHEALTHY_REPLACE_AFTER_S
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        ReconcilerSettings {
            backoff_interval_s: 60,
            backoff_lookback_s: 3600,
            failure_hard_limit: 3,
            paused: false,
            unhealthy_replace_after_s: DEFAULT_UNHEALTHY_REPLACE_AFTER_S,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcSettings {
    pub enabled: bool,
    pub ttl_s: u64,
    pub basis: GcBasis,
    pub warn_before_s: u64,
    pub active_grace_s: u64,
    pub max_delete_fraction: Fraction,
    pub max_deletions_per_run: u64,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            enabled: true,
            ttl_s: 1_209_600,
            basis: GcBasis::LastActivity,
            warn_before_s: 86_400,
            active_grace_s: 900,
            max_delete_fraction: Fraction::from_decimal(25, 2),
            max_deletions_per_run: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcBasis {
    LastActivity,
    Creation,
}

impl GcBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            GcBasis::LastActivity => "last_activity",
            GcBasis::Creation => "creation",
        }
    }
}

/// A non-negative decimal fraction kept exact (`0.29` is 29/100, not the nearest binary
/// float), so `D > fraction × P` compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    numerator: u128,
    /// A power of ten.
    denominator: u128,
}

impl Fraction {
    pub fn from_decimal(digits: u128, scale: u32) -> Fraction {
        Fraction { numerator: digits, denominator: 10u128.pow(scale) }
    }

    /// The decimal a JSON or TOML number was written as: the shortest representation that
    /// reads back as the same float, which is what the operator typed.
    pub fn from_f64(value: f64) -> Result<Fraction, String> {
        if !value.is_finite() || value < 0.0 {
            return Err(format!("{value} is not a non-negative number"));
        }
        let text = format!("{value}");
        let (whole, fractional) = text.split_once('.').unwrap_or((&text, ""));
        let scale =
            u32::try_from(fractional.len()).map_err(|_| format!("{value} has too many digits"))?;
        if scale > 30 {
            return Err(format!("{value} has too many digits"));
        }
        let digits: u128 = format!("{whole}{fractional}")
            .parse()
            .map_err(|_| format!("{value} is out of range"))?;
        Ok(Fraction::from_decimal(digits, scale))
    }

    pub fn as_f64(self) -> f64 {
        self.numerator as f64 / self.denominator as f64
    }

    /// `count > self × total`, exactly.
    pub fn is_exceeded_by(self, count: u64, total: u64) -> bool {
        u128::from(count) * self.denominator > self.numerator * u128::from(total)
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_f64())
    }
}

impl Serialize for Fraction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Fraction::from_f64(value).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    pub organization_name: String,
    pub active_version_id: String,
    pub deleted: bool,
    pub deprecated: bool,
    #[serde(default)]
    pub schedule: TemplateSchedule,
    #[serde(default)]
    pub gc: TemplateGc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Sunday,
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Sunday,
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
    ];

    /// Sunday = 0.
    pub fn from_sunday(index: u32) -> Option<Weekday> {
        Weekday::ALL.get(index as usize).copied()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateSchedule {
    pub autostart_enabled: bool,
    pub autostop_enabled: bool,
    pub autostart_days: Vec<Weekday>,
    pub default_ttl_s: u64,
    pub failure_ttl_s: u64,
    pub time_til_dormant_s: u64,
    pub time_til_dormant_autodelete_s: u64,
    pub require_active_version: bool,
}

impl Default for TemplateSchedule {
    fn default() -> Self {
        TemplateSchedule {
            autostart_enabled: true,
            autostop_enabled: true,
            autostart_days: Weekday::ALL.to_vec(),
            default_ttl_s: 0,
            failure_ttl_s: 0,
            time_til_dormant_s: 0,
            time_til_dormant_autodelete_s: 0,
            require_active_version: false,
        }
    }
}

/// Per-template GC overrides; `None` = the global value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateGc {
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub basis: Option<GcBasis>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub warn_before_s: Option<u64>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub active_grace_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub id: String,
    pub name: String,
    pub template_id: String,
    pub template_version_id: String,
    /// `null` = no prebuilds: the reconciler does not see the preset.
    #[serde(deserialize_with = "Option::deserialize")]
    pub desired_instances: Option<u64>,
    /// `null` or 0 = never expires.
    #[serde(default)]
    pub ttl_s: Option<u64>,
    #[serde(default)]
    pub scheduling_timezone: String,
    #[serde(default)]
    pub schedules: Vec<PresetSchedule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetSchedule {
    pub cron: String,
    pub instances: u64,
}

/// `"prebuilds"` (an unclaimed prebuild) or `"user:<id>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Prebuilds,
    User(String),
}

impl Owner {
    pub fn parse(text: &str) -> Result<Owner, String> {
        if text == "prebuilds" {
            return Ok(Owner::Prebuilds);
        }
        match text.strip_prefix("user:") {
            Some(id) if !id.is_empty() => Ok(Owner::User(id.to_owned())),
            _ => Err(format!("expected \"prebuilds\" or \"user:<id>\", found {text:?}")),
        }
    }

    pub fn is_prebuilds(&self) -> bool {
        matches!(self, Owner::Prebuilds)
    }

    /// The owning user's id (the prebuilds system user's for `Prebuilds`).
    pub fn user_id(&self) -> &str {
        match self {
            Owner::Prebuilds => crate::domain::PREBUILDS_USER_ID,
            Owner::User(id) => id,
        }
    }
}

impl Serialize for Owner {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Owner::Prebuilds => serializer.serialize_str("prebuilds"),
            Owner::User(id) => serializer.serialize_str(&format!("user:{id}")),
        }
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Owner::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerStatus {
    #[default]
    Active,
    Suspended,
    Dormant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutomaticUpdates {
    #[default]
    Never,
    Always,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    pub id: String,
    pub template_id: String,
    pub owner: Owner,
    #[serde(default)]
    pub owner_status: OwnerStatus,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Absent = `created_at`.
    #[serde(default, with = "rfc3339::present", skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub agents_ready: Option<bool>,
    #[serde(default, with = "rfc3339::option")]
    pub dormant_at: Option<DateTime<Utc>>,
    #[serde(default, with = "rfc3339::option")]
    pub deleting_at: Option<DateTime<Utc>>,
    /// A weekly cron (planner.md §5.1).
    #[serde(default)]
    pub autostart_schedule: Option<String>,
    #[serde(default)]
    pub automatic_updates: AutomaticUpdates,
    #[serde(default)]
    pub protected: bool,
    #[serde(default, with = "rfc3339::option")]
    pub gc_warned_at: Option<DateTime<Utc>>,
    /// Since when its readiness probe fails (absent: healthy or not probed).
    #[serde(default, with = "rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<DateTime<Utc>>,
    /// What reported `last_used_at` (`api`, `proxy`, `backend`); informational, no rule
    /// reads it (absent: unknown, or nothing since creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_source: Option<crate::domain::activity::ActivitySource>,
}

impl Workspace {
    pub fn last_used(&self) -> DateTime<Utc> {
        self.last_used_at.unwrap_or(self.created_at)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    Prebuilds,
    User,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub workspace_id: String,
    pub build_number: u64,
    pub transition: crate::domain::Transition,
    pub job_status: crate::domain::JobStatus,
    pub template_version_id: String,
    #[serde(default)]
    pub preset_id: Option<String>,
    pub initiator: Initiator,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "rfc3339::option")]
    pub job_completed_at: Option<DateTime<Utc>>,
    #[serde(default, with = "rfc3339::option")]
    pub deadline: Option<DateTime<Utc>>,
}

impl Snapshot {
    /// Parses and checks a snapshot document.
    pub fn parse(text: &str) -> Result<Snapshot, SnapshotError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let snapshot: Snapshot =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let path = error.path().to_string();
                let message = error.inner().to_string();
                // serde_json appends the position; the path already says where.
                let reason = match message.rfind(" at line ") {
                    Some(at) => message[..at].to_owned(),
                    None => message,
                };
                let path = if path == "." || path == "?" { "$".to_owned() } else { path };
                SnapshotError { path, reason }
            })?;
        deserializer
            .end()
            .map_err(|error| SnapshotError { path: "$".to_owned(), reason: error.to_string() })?;
        snapshot.check()?;
        Ok(snapshot)
    }

    /// The checks serde cannot make.
    pub fn check(&self) -> Result<(), SnapshotError> {
        let fail = |path: String, reason: String| Err(SnapshotError { path, reason });
        let mut templates = HashSet::new();
        for (index, template) in self.templates.iter().enumerate() {
            if !templates.insert(template.id.as_str()) {
                return fail(
                    format!("templates[{index}].id"),
                    format!("duplicate id {:?}", template.id),
                );
            }
        }
        let mut presets = HashSet::new();
        for (index, preset) in self.presets.iter().enumerate() {
            if !presets.insert(preset.id.as_str()) {
                return fail(
                    format!("presets[{index}].id"),
                    format!("duplicate id {:?}", preset.id),
                );
            }
            if !templates.contains(preset.template_id.as_str()) {
                return fail(
                    format!("presets[{index}].template_id"),
                    format!("unknown template {:?}", preset.template_id),
                );
            }
        }
        let mut workspaces = HashSet::new();
        for (index, workspace) in self.workspaces.iter().enumerate() {
            if !workspaces.insert(workspace.id.as_str()) {
                return fail(
                    format!("workspaces[{index}].id"),
                    format!("duplicate id {:?}", workspace.id),
                );
            }
            if !templates.contains(workspace.template_id.as_str()) {
                return fail(
                    format!("workspaces[{index}].template_id"),
                    format!("unknown template {:?}", workspace.template_id),
                );
            }
            if let Some(schedule) = &workspace.autostart_schedule
                && let Err(error) = CronSchedule::parse_weekly(schedule)
            {
                return fail(format!("workspaces[{index}].autostart_schedule"), error.to_string());
            }
        }
        let mut builds = HashSet::new();
        for (index, build) in self.builds.iter().enumerate() {
            if !workspaces.contains(build.workspace_id.as_str()) {
                return fail(
                    format!("builds[{index}].workspace_id"),
                    format!("unknown workspace {:?}", build.workspace_id),
                );
            }
            if build.job_status == crate::domain::JobStatus::Interrupted {
                // The store's own status; the contract's documents say `canceled`.
                return fail(
                    format!("builds[{index}].job_status"),
                    "unknown job status \"interrupted\"; expected one of: pending, running, succeeded, failed, canceling, canceled".to_owned(),
                );
            }
            if !builds.insert((build.workspace_id.as_str(), build.build_number)) {
                return fail(
                    format!("builds[{index}].build_number"),
                    format!(
                        "duplicate build {} of workspace {:?}",
                        build.build_number, build.workspace_id
                    ),
                );
            }
            if let Some(preset) = &build.preset_id
                && !presets.contains(preset.as_str())
            {
                return fail(
                    format!("builds[{index}].preset_id"),
                    format!("unknown preset {preset:?}"),
                );
            }
        }
        Ok(())
    }
}

/// Lookups over a snapshot, built once per plan.
pub struct Index<'a> {
    pub snapshot: &'a Snapshot,
    pub templates: HashMap<&'a str, &'a Template>,
    /// Builds of each workspace (by workspace position), lowest build number first.
    pub builds: Vec<Vec<&'a Build>>,
}

impl<'a> Index<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Index<'a> {
        let templates =
            snapshot.templates.iter().map(|template| (template.id.as_str(), template)).collect();
        let positions: HashMap<&str, usize> = snapshot
            .workspaces
            .iter()
            .enumerate()
            .map(|(index, workspace)| (workspace.id.as_str(), index))
            .collect();
        let mut builds: Vec<Vec<&Build>> = vec![Vec::new(); snapshot.workspaces.len()];
        for build in &snapshot.builds {
            if let Some(&position) = positions.get(build.workspace_id.as_str()) {
                builds[position].push(build);
            }
        }
        for list in &mut builds {
            list.sort_by_key(|build| build.build_number);
        }
        Index { snapshot, templates, builds }
    }

    /// The workspace's highest-numbered build.
    pub fn latest(&self, workspace: usize) -> Option<&'a Build> {
        self.builds[workspace].last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_compare_exactly() {
        let fraction = Fraction::from_f64(0.29).unwrap();
        assert!(!fraction.is_exceeded_by(29, 100));
        assert!(fraction.is_exceeded_by(30, 100));
        let quarter = Fraction::from_f64(0.25).unwrap();
        assert!(!quarter.is_exceeded_by(1, 4));
        assert!(quarter.is_exceeded_by(2, 4));
        assert!(Fraction::from_f64(-0.1).is_err());
        assert!(!Fraction::from_f64(2.0).unwrap().is_exceeded_by(4, 2));
    }

    fn minimal(workspaces: &str, builds: &str) -> String {
        format!(
            r#"{{"now":"2025-06-02T12:00:00Z","templates":[{{"id":"t","name":"t","organization_id":"o","organization_name":"o","active_version_id":"v","deleted":false,"deprecated":false}}],"presets":[],"workspaces":[{workspaces}],"builds":[{builds}]}}"#
        )
    }

    #[test]
    fn errors_name_the_json_path() {
        let bad_time = minimal(
            r#"{"id":"w","template_id":"t","owner":"prebuilds","created_at":"yesterday"}"#,
            "",
        );
        assert_eq!(
            Snapshot::parse(&bad_time).unwrap_err().to_string(),
            "workspaces[0].created_at: invalid RFC3339 time \"yesterday\""
        );
        let unknown = minimal(
            r#"{"id":"w","template_id":"t","owner":"prebuilds","created_at":"2025-06-02T12:00:00Z","colour":1}"#,
            "",
        );
        assert_eq!(Snapshot::parse(&unknown).unwrap_err().path, "workspaces[0].colour");
        let owner = minimal(
            r#"{"id":"w","template_id":"t","owner":"bob","created_at":"2025-06-02T12:00:00Z"}"#,
            "",
        );
        assert_eq!(Snapshot::parse(&owner).unwrap_err().path, "workspaces[0].owner");
        let negative = minimal(
            r#"{"id":"w","template_id":"t","owner":"prebuilds","created_at":"2025-06-02T12:00:00Z"}"#,
            r#"{"workspace_id":"w","build_number":-1,"transition":"start","job_status":"succeeded","template_version_id":"v","initiator":"user","created_at":"2025-06-02T12:00:00Z"}"#,
        );
        assert_eq!(Snapshot::parse(&negative).unwrap_err().path, "builds[0].build_number");
        let dangling = minimal(
            r#"{"id":"w","template_id":"t","owner":"prebuilds","created_at":"2025-06-02T12:00:00Z"}"#,
            r#"{"workspace_id":"x","build_number":1,"transition":"start","job_status":"succeeded","template_version_id":"v","initiator":"user","created_at":"2025-06-02T12:00:00Z"}"#,
        );
        assert_eq!(
            Snapshot::parse(&dangling).unwrap_err().to_string(),
            "builds[0].workspace_id: unknown workspace \"x\""
        );
        let cron = minimal(
            r#"{"id":"w","template_id":"t","owner":"user:u","created_at":"2025-06-02T12:00:00Z","autostart_schedule":"0 9 1 * *"}"#,
            "",
        );
        assert_eq!(Snapshot::parse(&cron).unwrap_err().path, "workspaces[0].autostart_schedule");
        let null_last_used = minimal(
            r#"{"id":"w","template_id":"t","owner":"user:u","created_at":"2025-06-02T12:00:00Z","last_used_at":null}"#,
            "",
        );
        assert_eq!(
            Snapshot::parse(&null_last_used).unwrap_err().path,
            "workspaces[0].last_used_at"
        );
        let duplicate = minimal(
            r#"{"id":"w","template_id":"t","owner":"user:u","created_at":"2025-06-02T12:00:00Z"},{"id":"w","template_id":"t","owner":"user:u","created_at":"2025-06-02T12:00:00Z"}"#,
            "",
        );
        assert_eq!(
            Snapshot::parse(&duplicate).unwrap_err().to_string(),
            "workspaces[1].id: duplicate id \"w\""
        );
        assert_eq!(Snapshot::parse("{").unwrap_err().path, "$");
    }

    #[test]
    fn a_preset_must_say_desired_instances_even_if_null() {
        let text = r#"{"now":"2025-06-02T12:00:00Z","templates":[{"id":"t","name":"t","organization_id":"o","organization_name":"o","active_version_id":"v","deleted":false,"deprecated":false}],"presets":[{"id":"p","name":"p","template_id":"t","template_version_id":"v"}],"workspaces":[],"builds":[]}"#;
        let error = Snapshot::parse(text).unwrap_err();
        assert_eq!(error.path, "presets[0]");
        assert!(error.reason.contains("desired_instances"), "{error}");
        let ok = text.replace(
            r#""template_version_id":"v"}"#,
            r#""template_version_id":"v","desired_instances":null}"#,
        );
        assert_eq!(Snapshot::parse(&ok).unwrap().presets[0].desired_instances, None);
    }
}
