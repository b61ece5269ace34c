//! `[[templates]]`: templates, their parameters, schedule options and presets with prebuild
//! pools, as the operator declares them in the config file, and their validation.
//!
//! Owns the config shape and every check that can be made before anything is written
//! (names, types, durations, cron expressions, zones, overlaps, instance caps). Turning a
//! valid declaration into database rows is `crate::templates`' job.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::container::{CONTAINER_BACKEND, check_spec, parse_spec};
use crate::config::duration::HumanDuration;
use crate::domain::ParameterType;
use crate::domain::parameters::{ParameterSpec, check_value};
use crate::planner::schedule::{CronSchedule, check_no_overlap, parse_zone};
use crate::planner::snapshot::GcBasis;

/// Weekday names for `autostart_days`, Sunday first (bit 0).
pub const WEEKDAYS: [&str; 7] =
    ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];

/// One `[[templates]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub name: String,
    /// Created if missing.
    #[serde(default = "default_organization")]
    pub organization: String,
    #[serde(default)]
    pub display_name: String,
    /// `local`, `container` or the name of a `[provisioner.exec.NAME]` profile.
    #[serde(default = "default_provisioner")]
    pub provisioner: String,
    /// Settings handed to the provisioner with every job (part of the version content).
    #[serde(default)]
    pub provisioner_config: serde_json::Map<String, serde_json::Value>,
    /// Autostop TTL of a started workspace; 0 = none.
    #[serde(default)]
    pub default_ttl: HumanDuration,
    /// Cap on any deadline; 0 = none.
    #[serde(default)]
    pub max_ttl: HumanDuration,
    #[serde(default = "yes")]
    pub autostart_enabled: bool,
    #[serde(default = "yes")]
    pub autostop_enabled: bool,
    #[serde(default = "every_day")]
    pub autostart_days: Vec<String>,
    /// Failed starts are stopped after this; 0 = never.
    #[serde(default)]
    pub failure_ttl: HumanDuration,
    /// Inactive workspaces become dormant after this; 0 = never.
    #[serde(default)]
    pub time_til_dormant: HumanDuration,
    /// Dormant workspaces are deleted after this; 0 = never.
    #[serde(default)]
    pub time_til_dormant_autodelete: HumanDuration,
    #[serde(default)]
    pub require_active_version: bool,
    #[serde(default)]
    pub deprecated: bool,
    /// Overrides of `[gc]` for this template's workspaces.
    #[serde(default)]
    pub gc: TemplateGcConfig,
    #[serde(default)]
    pub parameters: Vec<ParameterConfig>,
    #[serde(default)]
    pub presets: Vec<PresetConfig>,
}

/// Per-template GC overrides; unset keys use `[gc]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateGcConfig {
    pub enabled: Option<bool>,
    pub ttl: Option<HumanDuration>,
    pub basis: Option<GcBasis>,
    pub warn_before: Option<HumanDuration>,
    pub active_grace: Option<HumanDuration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterConfig {
    pub name: String,
    #[serde(rename = "type", default = "string_type")]
    pub kind: ParameterType,
    pub default: Option<String>,
    #[serde(default = "yes")]
    pub mutable: bool,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetConfig {
    pub name: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// A pool of prebuilt workspaces for this preset; absent = none.
    pub prebuilds: Option<PrebuildsConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrebuildsConfig {
    /// Ready prebuilds to keep when no schedule matches.
    pub instances: u32,
    /// An unclaimed prebuild older than this is replaced; absent or 0 = never.
    pub expiration: Option<HumanDuration>,
    /// IANA zone the schedules are read in; required with schedules.
    #[serde(default)]
    pub timezone: String,
    #[serde(default)]
    pub schedule: Vec<ScheduleConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A time range: minute `*`, e.g. `"* 8-18 * * 1-5"`.
    pub cron: String,
    pub instances: u32,
}

fn default_organization() -> String {
    "default".to_owned()
}

fn default_provisioner() -> String {
    "local".to_owned()
}

fn yes() -> bool {
    true
}

fn every_day() -> Vec<String> {
    WEEKDAYS.iter().map(|day| (*day).to_owned()).collect()
}

fn string_type() -> ParameterType {
    ParameterType::String
}

impl ParameterConfig {
    pub fn to_spec(&self) -> ParameterSpec {
        ParameterSpec {
            name: self.name.clone(),
            kind: self.kind,
            mutable: self.mutable,
            default_value: self.default.clone(),
            options: self.options.clone(),
            description: self.description.clone(),
        }
    }
}

impl TemplateConfig {
    /// `autostart_days` as a bit set, Sunday = bit 0; `None` for an unknown name.
    pub fn autostart_days_mask(&self) -> Option<u8> {
        let mut mask = 0u8;
        for day in &self.autostart_days {
            let index = WEEKDAYS.iter().position(|name| name.eq_ignore_ascii_case(day))?;
            mask |= 1 << index;
        }
        Some(mask)
    }
}

/// A problem in `[[templates]]`: the key path (`templates[0].presets[1].name`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    pub key: String,
    pub reason: String,
}

/// The shortest GC TTL accepted (`[gc] ttl`, `templates[].gc.ttl`): one hour. A TTL of
/// seconds would delete workspaces between two uses; nobody means that.
pub const MIN_GC_TTL_SECS: u64 = 3_600;

/// The reason a GC TTL below `MIN_GC_TTL_SECS` is rejected.
pub fn gc_ttl_too_short(ttl: HumanDuration) -> String {
    format!("{ttl} is too short for a GC TTL; use at least 1h")
}

/// Checks every template; the first problem found is returned.
pub fn validate(
    templates: &[TemplateConfig],
    exec_profiles: &BTreeSet<String>,
    max_instances: u32,
) -> Result<(), TemplateProblem> {
    let mut seen = BTreeSet::new();
    for (index, template) in templates.iter().enumerate() {
        let at = |key: &str| format!("templates[{index}]{key}");
        let fail = |key: &str, reason: String| TemplateProblem { key: at(key), reason };
        check_name(&template.name).map_err(|reason| fail(".name", reason))?;
        check_name(&template.organization).map_err(|reason| fail(".organization", reason))?;
        if !seen.insert((template.organization.clone(), template.name.clone())) {
            return Err(fail(
                ".name",
                format!(
                    "template {:?} is declared twice in organization {:?}",
                    template.name, template.organization
                ),
            ));
        }
        if template.provisioner == CONTAINER_BACKEND {
            let parameters = template.parameters.iter().map(|p| p.name.clone()).collect();
            parse_spec(&template.provisioner_config)
                .and_then(|spec| check_spec(&spec, &parameters))
                .map_err(|problem| {
                    let key = match problem.key.as_str() {
                        "" => String::new(),
                        key => format!(".{key}"),
                    };
                    fail(&format!(".provisioner_config{key}"), problem.reason)
                })?;
        } else if template.provisioner != crate::domain::LOCAL_BACKEND
            && !exec_profiles.contains(&template.provisioner)
        {
            return Err(fail(
                ".provisioner",
                format!(
                    "unknown provisioner {:?}: use \"local\", \"container\" or declare [provisioner.exec.{}]",
                    template.provisioner, template.provisioner
                ),
            ));
        }
        if let Some(ttl) = template.gc.ttl
            && ttl.as_secs() < MIN_GC_TTL_SECS
        {
            return Err(fail(".gc.ttl", gc_ttl_too_short(ttl)));
        }
        if template.autostart_days_mask().is_none() {
            return Err(fail(
                ".autostart_days",
                format!(
                    "{:?} holds an unknown day; use {}",
                    template.autostart_days,
                    WEEKDAYS.join(", ")
                ),
            ));
        }
        let mut parameter_names = BTreeSet::new();
        for (p, parameter) in template.parameters.iter().enumerate() {
            let key = |field: &str| format!(".parameters[{p}]{field}");
            check_name(&parameter.name).map_err(|reason| fail(&key(".name"), reason))?;
            if !parameter_names.insert(parameter.name.clone()) {
                return Err(fail(
                    &key(".name"),
                    format!("parameter {:?} is declared twice", parameter.name),
                ));
            }
            let spec = parameter.to_spec();
            for (o, option) in parameter.options.iter().enumerate() {
                let mut without_options = spec.clone();
                without_options.options.clear();
                check_value(&without_options, option)
                    .map_err(|error| fail(&key(&format!(".options[{o}]")), error.to_string()))?;
            }
            if let Some(default) = &parameter.default {
                check_value(&spec, default)
                    .map_err(|error| fail(&key(".default"), error.to_string()))?;
            }
        }
        let specs: Vec<ParameterSpec> =
            template.parameters.iter().map(ParameterConfig::to_spec).collect();
        let mut preset_names = BTreeSet::new();
        for (p, preset) in template.presets.iter().enumerate() {
            let key = |field: &str| format!(".presets[{p}]{field}");
            check_name(&preset.name).map_err(|reason| fail(&key(".name"), reason))?;
            if !preset_names.insert(preset.name.clone()) {
                return Err(fail(
                    &key(".name"),
                    format!("preset {:?} is declared twice", preset.name),
                ));
            }
            for (name, value) in &preset.parameters {
                let spec = specs.iter().find(|spec| &spec.name == name).ok_or_else(|| {
                    fail(
                        &key(&format!(".parameters.{name}")),
                        format!("{name:?} is not a parameter of template {:?}", template.name),
                    )
                })?;
                check_value(spec, value).map_err(|error| {
                    fail(&key(&format!(".parameters.{name}")), error.to_string())
                })?;
            }
            if let Some(prebuilds) = &preset.prebuilds {
                validate_prebuilds(prebuilds, max_instances)
                    .map_err(|(field, reason)| fail(&key(&format!(".prebuilds{field}")), reason))?;
            }
        }
    }
    Ok(())
}

fn validate_prebuilds(
    prebuilds: &PrebuildsConfig,
    max_instances: u32,
) -> Result<(), (String, String)> {
    let cap = |field: String, instances: u32| {
        if instances > max_instances {
            Err((
                field,
                format!(
                    "{instances} is above reconciler.max_instances_per_preset ({max_instances})"
                ),
            ))
        } else {
            Ok(())
        }
    };
    cap(".instances".to_owned(), prebuilds.instances)?;
    if prebuilds.schedule.is_empty() {
        if !prebuilds.timezone.is_empty() {
            parse_zone(&prebuilds.timezone)
                .map_err(|error| (".timezone".to_owned(), error.to_string()))?;
        }
        return Ok(());
    }
    if prebuilds.timezone.is_empty() {
        return Err((
            ".timezone".to_owned(),
            "is required when schedules are set (an IANA name such as Europe/Berlin)".to_owned(),
        ));
    }
    let zone = parse_zone(&prebuilds.timezone)
        .map_err(|error| (".timezone".to_owned(), error.to_string()))?;
    for (s, schedule) in prebuilds.schedule.iter().enumerate() {
        CronSchedule::parse_time_range(&schedule.cron, zone)
            .map_err(|error| (format!(".schedule[{s}].cron"), error.to_string()))?;
        cap(format!(".schedule[{s}].instances"), schedule.instances)?;
    }
    let crons: Vec<&str> =
        prebuilds.schedule.iter().map(|schedule| schedule.cron.as_str()).collect();
    check_no_overlap(&crons).map_err(|reason| (".schedule".to_owned(), reason))?;
    Ok(())
}

/// Names are non-empty and free of whitespace and control characters.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{name:?} must not contain whitespace"));
    }
    Ok(())
}
