//! Applying `[[templates]]` to the database: the config file is the source of truth for
//! templates, their versions and presets.
//!
//! Owns the diff between the file and the database. A template's *content* (provisioner,
//! provisioner settings, parameters) is hashed, and each preset's parameters are content
//! too; a change creates a new version and makes it active, which turns the old version's
//! prebuilds into outdated ones for the reconciler to replace. Pools (instances,
//! expiration, time zone, schedules) change in place on the active version, presets are
//! added to it and removed ones get a pool of 0, so a pool edit keeps ready prebuilds.
//! Schedule options (TTLs, dormancy, autostart, GC overrides) are updated in place. A template missing from the file is
//! soft-deleted. An unchanged file writes nothing. Everything happens in the caller's one
//! transaction, with one audit entry per change and one `config.applied` event.

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::config::templates::{PresetConfig, TemplateConfig};
use crate::domain::event::Event;
use crate::store::audit::{self, Actor, Entry};
use crate::store::templates::{self, PresetSpec, TemplateOptions, VersionSpec};
use crate::store::{StoreError, WriteTx};

/// A template as the config wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredTemplate {
    pub organization: String,
    pub name: String,
    pub options: TemplateOptions,
    pub version: VersionSpec,
    pub presets: Vec<PresetSpec>,
    /// The content hash as daemons before in-place pool changes computed it.
    pub legacy_hash: String,
}

/// What `apply` changed, by template name (`org/name`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub versions_created: Vec<String>,
    pub deleted: Vec<String>,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
            && self.updated.is_empty()
            && self.versions_created.is_empty()
            && self.deleted.is_empty()
    }
}

/// The templates `config` declares, with their content hashes. Pure.
pub fn desired(config: &Config) -> Vec<DesiredTemplate> {
    config.templates.iter().map(desired_template).collect()
}

fn seconds(duration: crate::config::duration::HumanDuration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn desired_template(template: &TemplateConfig) -> DesiredTemplate {
    let gc = &template.gc;
    let options = TemplateOptions {
        default_ttl_s: seconds(template.default_ttl),
        max_ttl_s: seconds(template.max_ttl),
        autostart_enabled: template.autostart_enabled,
        autostop_enabled: template.autostop_enabled,
        // Validation guarantees the names are known.
        autostart_days: template.autostart_days_mask().unwrap_or(0b111_1111),
        failure_ttl_s: seconds(template.failure_ttl),
        time_til_dormant_s: seconds(template.time_til_dormant),
        time_til_dormant_autodelete_s: seconds(template.time_til_dormant_autodelete),
        require_active_version: template.require_active_version,
        display_name: template.display_name.clone(),
        deprecated: template.deprecated,
        gc_enabled: gc.enabled,
        gc_ttl_s: gc.ttl.map(seconds),
        gc_basis: gc.basis.map(|basis| basis.as_str().to_owned()),
        gc_warn_before_s: gc.warn_before.map(seconds),
        gc_active_grace_s: gc.active_grace.map(seconds),
    };
    let parameters: Vec<_> =
        template.parameters.iter().map(|parameter| parameter.to_spec()).collect();
    let presets: Vec<PresetSpec> = template.presets.iter().map(preset_spec).collect();
    let provisioner_config = serde_json::Value::Object(template.provisioner_config.clone());
    // Field order is fixed by this literal and maps are sorted, so equal content hashes
    // equally across runs and versions of the daemon. Presets are not in it: their
    // parameters are compared one by one, their pools are operational settings.
    let content = json!({
        "provisioner": template.provisioner,
        "provisioner_config": provisioner_config,
        "parameters": parameters,
    });
    let content_hash = hex(&Sha256::digest(content.to_string().as_bytes()));
    // The hash before pools changed in place (it covered the presets), to recognise a
    // version written by an older daemon as the same content.
    let legacy = json!({
        "provisioner": template.provisioner,
        "provisioner_config": provisioner_config,
        "parameters": parameters,
        "presets": presets.iter().map(|preset| json!({
            "name": preset.name,
            "parameters": preset.parameters,
            "desired_instances": preset.desired_instances,
            "ttl_s": preset.ttl_s,
            "scheduling_timezone": preset.scheduling_timezone,
            "schedules": preset.schedules,
        })).collect::<Vec<_>>(),
    });
    let legacy_hash = hex(&Sha256::digest(legacy.to_string().as_bytes()));
    DesiredTemplate {
        organization: template.organization.clone(),
        name: template.name.clone(),
        options,
        version: VersionSpec {
            name: String::new(),
            content_hash,
            provisioner: template.provisioner.clone(),
            provisioner_config,
            parameters,
        },
        presets,
        legacy_hash,
    }
}

fn preset_spec(preset: &PresetConfig) -> PresetSpec {
    let prebuilds = preset.prebuilds.as_ref();
    PresetSpec {
        name: preset.name.clone(),
        parameters: preset.parameters.clone(),
        desired_instances: prebuilds.map(|prebuilds| i64::from(prebuilds.instances)),
        ttl_s: prebuilds
            .and_then(|prebuilds| prebuilds.expiration)
            .map(seconds)
            .filter(|ttl| *ttl > 0),
        scheduling_timezone: prebuilds
            .map(|prebuilds| prebuilds.timezone.clone())
            .unwrap_or_default(),
        schedules: prebuilds
            .map(|prebuilds| {
                prebuilds
                    .schedule
                    .iter()
                    .map(|schedule| (schedule.cron.clone(), i64::from(schedule.instances)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Brings the database in line with `desired`, in the caller's transaction.
pub fn apply(
    tx: &mut WriteTx<'_>,
    desired: &[DesiredTemplate],
    now: DateTime<Utc>,
) -> Result<ApplyReport, StoreError> {
    let actor = Actor::system("config");
    let mut report = ApplyReport::default();
    let live = templates::live(tx)?;
    for wanted in desired {
        let label = format!("{}/{}", wanted.organization, wanted.name);
        let organization_id = templates::ensure_organization(tx, &wanted.organization, now)?;
        let existing =
            live.iter().find(|t| t.organization_id == organization_id && t.name == wanted.name);
        let (template_id, needs_version) = match existing {
            None => {
                let id = templates::insert_template(
                    tx,
                    &organization_id,
                    &wanted.name,
                    &wanted.version.provisioner,
                    &wanted.options,
                    now,
                )?;
                audit::record(
                    tx,
                    &actor,
                    &Entry {
                        action: "template.created",
                        resource_type: "template",
                        resource_id: &id,
                        organization_id: Some(&organization_id),
                        details: json!({ "name": wanted.name }),
                    },
                    now,
                )?;
                report.created.push(label.clone());
                (id, true)
            }
            Some(existing) => {
                if templates::options(tx, &existing.id)?.as_ref() != Some(&wanted.options) {
                    templates::update_options(tx, &existing.id, &wanted.options, now)?;
                    // Autostart options decide when scheduled workspaces next start.
                    crate::store::lifecycle::refresh_next_start_all(tx, Some(&existing.id))?;
                    audit::record(
                        tx,
                        &actor,
                        &Entry {
                            action: "template.updated",
                            resource_type: "template",
                            resource_id: &existing.id,
                            organization_id: Some(&organization_id),
                            details: json!({ "name": wanted.name }),
                        },
                        now,
                    )?;
                    report.updated.push(label.clone());
                }
                let version = existing.active_version_id.as_deref();
                let hash = existing.content_hash.as_deref();
                let same_content = match (version, hash) {
                    (Some(version), Some(hash)) if hash == wanted.legacy_hash => {
                        templates::set_content_hash(tx, version, &wanted.version.content_hash)?;
                        true
                    }
                    (Some(version), Some(hash)) if hash == wanted.version.content_hash => {
                        // Pools change in place; a preset's parameters are content.
                        match sync_presets(tx, version, wanted, &organization_id, now)? {
                            PresetSync::Unchanged => true,
                            PresetSync::Changed => {
                                report.updated.push(label.clone());
                                true
                            }
                            PresetSync::ParametersChanged => false,
                        }
                    }
                    _ => false,
                };
                (existing.id.clone(), !same_content)
            }
        };
        if needs_version {
            let mut version = wanted.version.clone();
            version.name = format!("v{}", templates::version_count(tx, &template_id)? + 1);
            let version_id = templates::insert_active_version(tx, &template_id, &version, now)?;
            for preset in &wanted.presets {
                templates::insert_preset(tx, &version_id, preset, now)?;
            }
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "template.version_created",
                    resource_type: "template_version",
                    resource_id: &version_id,
                    organization_id: Some(&organization_id),
                    details: json!({ "template": wanted.name, "version": version.name, "content_hash": version.content_hash }),
                },
                now,
            )?;
            report.versions_created.push(label);
        }
    }
    report.updated.dedup();
    for gone in &live {
        let declared = desired.iter().any(|wanted| {
            wanted.organization == gone.organization_name && wanted.name == gone.name
        });
        if !declared {
            templates::soft_delete(tx, &gone.id, now)?;
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "template.deleted",
                    resource_type: "template",
                    resource_id: &gone.id,
                    organization_id: Some(&gone.organization_id),
                    details: json!({ "name": gone.name }),
                },
                now,
            )?;
            report.deleted.push(format!("{}/{}", gone.organization_name, gone.name));
        }
    }
    if !report.is_empty() {
        let count = |items: &Vec<String>| u32::try_from(items.len()).unwrap_or(u32::MAX);
        tx.emit(
            &Event::ConfigApplied {
                templates_changed: count(&report.created)
                    + count(&report.updated)
                    + count(&report.deleted),
                versions_created: count(&report.versions_created),
            },
            now,
        )?;
    }
    Ok(report)
}

/// What `sync_presets` did to a version's presets.
enum PresetSync {
    Unchanged,
    Changed,
    /// A preset on both sides has other parameters: that takes a new version.
    ParametersChanged,
}

/// Brings the active version's presets in line with `wanted` without a new version: pool
/// settings updated in place, new presets added, removed ones' pools set to 0 (their
/// prebuilds go; the preset stays for the history of workspaces built from it). Writes
/// nothing when a preset's parameters changed.
fn sync_presets(
    tx: &mut WriteTx<'_>,
    version_id: &str,
    wanted: &DesiredTemplate,
    organization_id: &str,
    now: DateTime<Utc>,
) -> Result<PresetSync, StoreError> {
    let stored = templates::version_presets(tx, version_id)?;
    let by_name = |name: &str| stored.iter().find(|preset| preset.spec.name == name);
    if wanted.presets.iter().any(|preset| {
        by_name(&preset.name).is_some_and(|stored| stored.spec.parameters != preset.parameters)
    }) {
        return Ok(PresetSync::ParametersChanged);
    }
    let actor = Actor::system("config");
    let mut changes = Vec::new();
    for preset in &wanted.presets {
        match by_name(&preset.name) {
            Some(stored) if stored.spec == *preset => {}
            Some(stored) => {
                templates::update_pool(tx, &stored.id, preset)?;
                changes.push(("preset.updated", stored.id.clone(), preset.name.clone()));
            }
            None => {
                let id = templates::insert_preset(tx, version_id, preset, now)?;
                changes.push(("preset.created", id, preset.name.clone()));
            }
        }
    }
    for gone in &stored {
        let declared = wanted.presets.iter().any(|preset| preset.name == gone.spec.name);
        let empty = PresetSpec {
            desired_instances: gone.spec.desired_instances.map(|_| 0),
            ttl_s: gone.spec.ttl_s,
            scheduling_timezone: String::new(),
            schedules: Vec::new(),
            ..gone.spec.clone()
        };
        if !declared && gone.spec != empty {
            templates::update_pool(tx, &gone.id, &empty)?;
            changes.push(("preset.removed", gone.id.clone(), gone.spec.name.clone()));
        }
    }
    for (action, id, name) in &changes {
        audit::record(
            tx,
            &actor,
            &Entry {
                action,
                resource_type: "preset",
                resource_id: id,
                organization_id: Some(organization_id),
                details: json!({ "template": wanted.name, "preset": name }),
            },
            now,
        )?;
    }
    Ok(if changes.is_empty() { PresetSync::Unchanged } else { PresetSync::Changed })
}
