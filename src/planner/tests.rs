//! Rule-by-rule tests of the planners, each on a small snapshot written as JSON (no
//! database). The spec's example cases run through the binary in tests/it/plan.rs.

use serde_json::{Value, json};

use super::plan;
use super::plan::{GcActionKind, GcSkipReason, LifecycleReason, PoolAction, PresetPlan};
use super::snapshot::Snapshot;
use crate::domain::Transition;

const NOW: &str = "2025-06-02T12:00:00Z";

fn template(extra: Value) -> Value {
    let mut template = json!({
        "id": "t", "name": "t", "organization_id": "o", "organization_name": "o",
        "active_version_id": "v2", "deleted": false, "deprecated": false
    });
    merge(&mut template, extra);
    template
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

fn preset(extra: Value) -> Value {
    let mut preset = json!({ "id": "p", "name": "p", "template_id": "t", "template_version_id": "v2", "desired_instances": 2 });
    merge(&mut preset, extra);
    preset
}

/// A prebuild with one build; `build` overrides the build's fields.
fn prebuild(id: &str, created_at: &str, build: Value) -> (Value, Value) {
    let workspace = json!({ "id": id, "template_id": "t", "owner": "prebuilds", "created_at": created_at, "agents_ready": true });
    let mut first = json!({
        "workspace_id": id, "build_number": 1, "transition": "start", "job_status": "succeeded",
        "template_version_id": "v2", "preset_id": "p", "initiator": "prebuilds", "created_at": created_at
    });
    merge(&mut first, build);
    (workspace, first)
}

fn snapshot(
    settings: Value,
    templates: Vec<Value>,
    presets: Vec<Value>,
    items: Vec<(Value, Value)>,
) -> Snapshot {
    let (workspaces, builds): (Vec<Value>, Vec<Value>) = items.into_iter().unzip();
    let document = json!({
        "now": NOW, "settings": settings, "templates": templates, "presets": presets,
        "workspaces": workspaces, "builds": builds
    });
    Snapshot::parse(&document.to_string()).unwrap()
}

fn preset_plan(snapshot: &Snapshot) -> PresetPlan {
    plan(snapshot).reconciler.presets.into_iter().next().unwrap()
}

fn delete_ids(actions: &[PoolAction]) -> Vec<String> {
    actions
        .iter()
        .flat_map(|action| match action {
            PoolAction::Delete { workspace_ids, .. } => workspace_ids.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn expiry_is_strictly_after_the_ttl() {
    // Created exactly ttl ago: not expired yet.
    let exact = snapshot(
        json!({}),
        vec![template(json!({}))],
        vec![preset(json!({ "ttl_s": 60 }))],
        vec![
            prebuild("a", "2025-06-02T11:59:00Z", json!({})),
            prebuild("b", "2025-06-02T11:58:59Z", json!({})),
        ],
    );
    let plan = preset_plan(&exact);
    assert_eq!(plan.state.expired, 1);
    assert_eq!(delete_ids(&plan.actions), vec!["b"]);
    assert_eq!(plan.actions.last(), Some(&PoolAction::Create { count: 1 }));
}

#[test]
fn backoff_still_holds_at_now_equal_until() {
    let settings =
        json!({ "reconciler": { "backoff_interval_s": 60, "backoff_lookback_s": 3600 } });
    // One failure at 11:59:00: until = 11:59:00 + 1 × 60 s = 12:00:00 = now.
    let at_until = snapshot(
        settings.clone(),
        vec![template(json!({}))],
        vec![preset(json!({}))],
        vec![prebuild("f", "2025-06-02T11:59:00Z", json!({ "job_status": "failed" }))],
    );
    let plan = preset_plan(&at_until);
    assert_eq!(plan.actions, vec![PoolAction::Backoff { until: NOW.parse().unwrap() }]);
    // One second earlier failure: the backoff is over and creation resumes.
    let after = snapshot(
        settings,
        vec![template(json!({}))],
        vec![preset(json!({}))],
        vec![prebuild("f", "2025-06-02T11:58:59Z", json!({ "job_status": "failed" }))],
    );
    let plan = preset_plan(&after);
    assert_eq!(plan.backoff_until, None);
    assert_eq!(plan.actions, vec![PoolAction::Create { count: 2 }]);
}

#[test]
fn a_failure_outside_the_newest_n_does_not_back_off() {
    // N = 1: the newest build succeeded, the older failure does not count.
    let plan = preset_plan(&snapshot(
        json!({}),
        vec![template(json!({}))],
        vec![preset(json!({ "desired_instances": 1 }))],
        vec![
            prebuild("ok", "2025-06-02T11:59:30Z", json!({})),
            prebuild("f", "2025-06-02T11:59:00Z", json!({ "job_status": "failed" })),
        ],
    ));
    assert_eq!(plan.backoff_until, None);
    assert!(plan.actions.is_empty());
}

#[test]
fn in_progress_starts_lower_creation_but_deletes_and_stops_do_not() {
    let plan = preset_plan(&snapshot(
        json!({}),
        vec![template(json!({}))],
        vec![preset(json!({ "desired_instances": 3 }))],
        vec![
            prebuild("run", "2025-06-02T11:00:00Z", json!({})),
            prebuild("starting", "2025-06-02T11:00:00Z", json!({ "job_status": "running" })),
            prebuild(
                "deleting",
                "2025-06-02T11:00:00Z",
                json!({ "transition": "delete", "job_status": "pending" }),
            ),
        ],
    ));
    assert_eq!((plan.state.actual, plan.state.starting, plan.state.deleting), (1, 1, 1));
    assert_eq!(plan.actions, vec![PoolAction::Create { count: 1 }]);
}

#[test]
fn the_hard_limit_counts_builds_of_deleted_templates_and_blocks_only_creation() {
    let settings = json!({ "reconciler": { "failure_hard_limit": 2, "backoff_lookback_s": 0 } });
    let plan = preset_plan(&snapshot(
        settings,
        vec![template(json!({ "deleted": true }))],
        vec![preset(json!({}))],
        vec![
            prebuild("f1", "2025-06-02T10:00:00Z", json!({ "job_status": "failed" })),
            prebuild("f2", "2025-06-02T10:00:01Z", json!({ "job_status": "failed" })),
            prebuild("ok", "2025-06-02T09:00:00Z", json!({})),
        ],
    ));
    assert!(plan.hard_limited);
    // The template is deleted: the preset is inactive and its running prebuild goes.
    assert!(!plan.active);
    assert_eq!(delete_ids(&plan.actions), vec!["ok"]);
}

#[test]
fn a_deprecated_template_makes_its_presets_inactive() {
    let plan = preset_plan(&snapshot(
        json!({}),
        vec![template(json!({ "deprecated": true }))],
        vec![preset(json!({}))],
        vec![
            prebuild("b", "2025-06-02T11:00:00Z", json!({})),
            prebuild("a", "2025-06-02T11:00:00Z", json!({})),
        ],
    ));
    assert_eq!(plan.state.desired, 0);
    // Oldest first; equal times ordered by id.
    assert_eq!(
        plan.actions,
        vec![PoolAction::Delete {
            reason: super::plan::DeleteReason::Inactive,
            workspace_ids: vec!["a".into(), "b".into()]
        }]
    );
}

#[test]
fn a_paused_reconciler_lists_no_presets_and_null_instances_are_invisible() {
    let paused = snapshot(
        json!({ "reconciler": { "paused": true } }),
        vec![template(json!({}))],
        vec![preset(json!({}))],
        vec![],
    );
    let result = plan(&paused).reconciler;
    assert!(result.paused && result.presets.is_empty());
    let invisible = snapshot(
        json!({}),
        vec![template(json!({}))],
        vec![preset(json!({ "desired_instances": null }))],
        vec![],
    );
    assert!(plan(&invisible).reconciler.presets.is_empty());
}

#[test]
fn schedules_apply_in_the_preset_zone_across_dst_and_fall_back_to_base() {
    let zoned = |schedules: Value, zone: &str, now: &str| {
        let mut snapshot = snapshot(
            json!({}),
            vec![template(json!({}))],
            vec![preset(json!({ "scheduling_timezone": zone, "schedules": schedules }))],
            vec![],
        );
        snapshot.now = now.parse().unwrap();
        preset_plan(&snapshot).state.desired
    };
    let nine_to_five = json!([{ "cron": "* 9-17 * * 1-5", "instances": 5 }]);
    // New York, Monday 2025-03-10 (after spring forward, EDT = UTC-4): 09:00 is 13:00Z.
    assert_eq!(zoned(nine_to_five.clone(), "America/New_York", "2025-03-10T13:00:00Z"), 5);
    assert_eq!(zoned(nine_to_five.clone(), "America/New_York", "2025-03-10T12:59:59Z"), 2);
    // The Friday before (EST = UTC-5): 09:00 was 14:00Z.
    assert_eq!(zoned(nine_to_five.clone(), "America/New_York", "2025-03-07T13:30:00Z"), 2);
    assert_eq!(zoned(nine_to_five.clone(), "America/New_York", "2025-03-07T14:00:00Z"), 5);
    // Unknown or empty zone: base.
    assert_eq!(zoned(nine_to_five.clone(), "Mars/Olympus", "2025-03-10T13:00:00Z"), 2);
    assert_eq!(zoned(nine_to_five, "", "2025-03-10T13:00:00Z"), 2);
    // Overlapping schedules: all ignored.
    let overlapping = json!([{ "cron": "* 9-12 * * *", "instances": 5 }, { "cron": "* 12-17 * * *", "instances": 7 }]);
    assert_eq!(zoned(overlapping, "UTC", "2025-03-10T10:00:00Z"), 2);
    // A bad schedule alone is skipped; the next one still applies.
    let one_bad =
        json!([{ "cron": "0 9 * * *", "instances": 5 }, { "cron": "* 10 * * *", "instances": 7 }]);
    assert_eq!(zoned(one_bad, "UTC", "2025-03-10T10:30:00Z"), 7);
}

fn user_workspace(extra: Value) -> Value {
    let mut workspace = json!({ "id": "w", "template_id": "t", "owner": "user:u", "created_at": "2025-06-01T00:00:00Z" });
    merge(&mut workspace, extra);
    workspace
}

fn user_build(extra: Value) -> Value {
    let mut build = json!({
        "workspace_id": "w", "build_number": 1, "transition": "start", "job_status": "succeeded",
        "template_version_id": "v1", "initiator": "user", "created_at": "2025-06-01T00:00:00Z",
        "job_completed_at": "2025-06-01T00:01:00Z"
    });
    merge(&mut build, extra);
    build
}

fn decide(
    template_extra: Value,
    workspace: Value,
    build: Value,
) -> Option<super::plan::LifecycleDecision> {
    let snapshot =
        snapshot(json!({}), vec![template(template_extra)], vec![], vec![(workspace, build)]);
    plan(&snapshot).lifecycle.into_iter().next()
}

#[test]
fn autostop_fires_at_the_deadline_minute_or_for_suspended_owners() {
    // now 12:00:00; a deadline of 12:00:30 is reached by the 12:00 tick only at 12:01.
    assert_eq!(
        decide(
            json!({}),
            user_workspace(json!({})),
            user_build(json!({ "deadline": "2025-06-02T12:00:30Z" }))
        ),
        None
    );
    let due = decide(
        json!({}),
        user_workspace(json!({})),
        user_build(json!({ "deadline": "2025-06-02T12:00:00Z" })),
    )
    .unwrap();
    assert_eq!((due.transition, due.reason), (Some(Transition::Stop), LifecycleReason::Autostop));
    let suspended = decide(
        json!({}),
        user_workspace(json!({ "owner_status": "suspended" })),
        user_build(json!({})),
    )
    .unwrap();
    assert_eq!(suspended.reason, LifecycleReason::Autostop);
    // A failed start, a dormant workspace and a prebuild are left alone by autostop.
    let failed = user_build(json!({ "deadline": "2025-06-02T11:00:00Z", "job_status": "failed" }));
    assert_eq!(decide(json!({}), user_workspace(json!({})), failed), None);
    let dormant = user_workspace(json!({ "dormant_at": "2025-06-02T00:00:00Z" }));
    assert_eq!(
        decide(json!({}), dormant, user_build(json!({ "deadline": "2025-06-02T11:00:00Z" }))),
        None
    );
    let running =
        user_build(json!({ "deadline": "2025-06-02T11:00:00Z", "job_status": "running" }));
    assert_eq!(decide(json!({}), user_workspace(json!({})), running), None);
}

#[test]
fn autostart_respects_days_owner_and_template_switches() {
    let stopped = user_build(json!({ "transition": "stop", "created_at": "2025-06-01T20:00:00Z" }));
    let scheduled = user_workspace(json!({ "autostart_schedule": "0 9 * * *" }));
    // Monday 09:00 UTC fired before now (Monday 12:00).
    let due = decide(json!({}), scheduled.clone(), stopped.clone()).unwrap();
    assert_eq!(due.reason, LifecycleReason::Autostart);
    assert_eq!(due.template_version_id.as_deref(), Some("v1"));
    // Only Tuesdays allowed: the next allowed firing is tomorrow.
    let tuesday_only = json!({ "schedule": { "autostart_days": ["tuesday"] } });
    assert_eq!(decide(tuesday_only, scheduled.clone(), stopped.clone()), None);
    // Autostart disabled, suspended owner: nothing.
    assert_eq!(
        decide(
            json!({ "schedule": { "autostart_enabled": false } }),
            scheduled.clone(),
            stopped.clone()
        ),
        None
    );
    let suspended =
        user_workspace(json!({ "autostart_schedule": "0 9 * * *", "owner_status": "suspended" }));
    assert_eq!(decide(json!({}), suspended, stopped.clone()), None);
    // Automatic updates: the active version.
    let always =
        user_workspace(json!({ "autostart_schedule": "0 9 * * *", "automatic_updates": "always" }));
    assert_eq!(
        decide(json!({}), always, stopped).unwrap().template_version_id.as_deref(),
        Some("v2")
    );
}

#[test]
fn failed_starts_are_stopped_after_the_failure_ttl() {
    let failed =
        user_build(json!({ "job_status": "failed", "job_completed_at": "2025-06-02T11:00:00Z" }));
    assert_eq!(
        decide(
            json!({ "schedule": { "failure_ttl_s": 3600 } }),
            user_workspace(json!({})),
            failed.clone()
        ),
        None
    );
    let due =
        decide(json!({ "schedule": { "failure_ttl_s": 3599 } }), user_workspace(json!({})), failed)
            .unwrap();
    assert_eq!((due.transition, due.reason), (Some(Transition::Stop), LifecycleReason::Failedstop));
}

#[test]
fn dormancy_then_autodelete() {
    let idle = user_workspace(json!({ "last_used_at": "2025-06-01T00:00:00Z" }));
    let template = json!({ "schedule": { "time_til_dormant_s": 3600, "time_til_dormant_autodelete_s": 86400 } });
    let due = decide(template.clone(), idle, user_build(json!({}))).unwrap();
    assert!(due.becomes_dormant);
    assert_eq!((due.transition, due.reason), (Some(Transition::Stop), LifecycleReason::Dormancy));
    let dormant = user_workspace(json!({
        "last_used_at": "2025-06-01T00:00:00Z", "dormant_at": "2025-06-01T01:00:00Z", "deleting_at": "2025-06-02T11:59:00Z"
    }));
    let stopped = user_build(json!({ "transition": "stop" }));
    let due = decide(template.clone(), dormant.clone(), stopped).unwrap();
    assert_eq!(
        (due.transition, due.reason),
        (Some(Transition::Delete), LifecycleReason::Autodelete)
    );
    // A failed delete is retried only 24 h after it completed.
    let failed_delete = user_build(
        json!({ "transition": "delete", "job_status": "failed", "job_completed_at": "2025-06-02T00:00:00Z" }),
    );
    assert_eq!(decide(template, dormant, failed_delete), None);
}

fn gc_snapshot(gc: Value, workspaces: Vec<(Value, Value)>) -> Snapshot {
    snapshot(json!({ "gc": gc }), vec![template(json!({}))], vec![], workspaces)
}

fn gc_workspace(id: &str, last_used: &str, extra: Value) -> (Value, Value) {
    let mut workspace = user_workspace(
        json!({ "id": id, "last_used_at": last_used, "created_at": "2025-01-01T00:00:00Z" }),
    );
    merge(&mut workspace, extra);
    (workspace, user_build(json!({ "workspace_id": id, "transition": "stop" })))
}

#[test]
fn gc_warns_before_it_deletes_and_a_stale_warning_does_not_count() {
    // A single workspace: let the safety valve allow deleting all of it.
    let gc = json!({ "ttl_s": 86400, "warn_before_s": 3600, "active_grace_s": 60, "max_delete_fraction": 1 });
    // Age 23.5 h: due (past ttl − warn), not warned: warn.
    let plan =
        plan(&gc_snapshot(gc.clone(), vec![gc_workspace("a", "2025-06-01T12:30:00Z", json!({}))]))
            .gc;
    assert_eq!(plan.actions[0].action, GcActionKind::Warn);
    assert_eq!(plan.actions[0].deletes_at, Some("2025-06-02T13:00:00Z".parse().unwrap()));
    // Age 25 h, warned 2 h ago within the due period: delete.
    let warned = json!({ "gc_warned_at": "2025-06-02T10:00:00Z" });
    let plan = super::plan(&gc_snapshot(
        gc.clone(),
        vec![gc_workspace("a", "2025-06-01T11:00:00Z", warned)],
    ))
    .gc;
    assert_eq!(plan.actions[0].action, GcActionKind::Delete);
    // A warning from before the current due period (the user came back since): warn again.
    let stale = json!({ "gc_warned_at": "2025-05-01T00:00:00Z" });
    let plan = super::plan(&gc_snapshot(
        gc.clone(),
        vec![gc_workspace("a", "2025-06-01T11:00:00Z", stale)],
    ))
    .gc;
    assert_eq!(plan.actions[0].action, GcActionKind::Warn);
    // Warned 30 min ago: wait out the window.
    let recent = json!({ "gc_warned_at": "2025-06-02T11:30:00Z" });
    let plan =
        super::plan(&gc_snapshot(gc, vec![gc_workspace("a", "2025-06-01T11:00:00Z", recent)])).gc;
    assert_eq!(plan.actions[0].reason, Some(GcSkipReason::WarnWindow));
    assert_eq!(plan.actions[0].deletes_at, Some("2025-06-02T12:30:00Z".parse().unwrap()));
}

#[test]
fn gc_safety_valve_compares_the_fraction_exactly() {
    let warned = json!({ "gc_warned_at": "2025-06-02T00:00:00Z" });
    let old = |id: &str| gc_workspace(id, "2025-05-01T00:00:00Z", warned.clone());
    let fresh = |id: &str| gc_workspace(id, "2025-06-02T11:00:00Z", json!({}));
    let mut items: Vec<(Value, Value)> = (0..29).map(|n| old(&format!("old{n:02}"))).collect();
    items.extend((0..71).map(|n| fresh(&format!("new{n:02}"))));
    let gc = json!({ "ttl_s": 86400, "warn_before_s": 3600, "max_delete_fraction": 0.29 });
    let result = plan(&gc_snapshot(gc.clone(), items.clone())).gc;
    assert!(!result.safety_valve_tripped, "29 of 100 does not exceed 0.29");
    items.push(old("old29"));
    let result = plan(&gc_snapshot(gc, items)).gc;
    assert!(result.safety_valve_tripped);
    assert!(result.actions.iter().all(|action| action.action != GcActionKind::Delete));
}

#[test]
fn gc_skips_protected_active_and_busy_workspaces_and_never_lists_prebuilds() {
    let gc = json!({ "ttl_s": 86400, "warn_before_s": 3600, "active_grace_s": 900, "basis": "creation", "max_delete_fraction": 1 });
    let warned = |extra: Value| {
        let mut value = json!({ "gc_warned_at": "2025-06-01T00:00:00Z" });
        merge(&mut value, extra);
        value
    };
    let protected =
        gc_workspace("protected", "2025-06-01T00:00:00Z", warned(json!({ "protected": true })));
    // Used 10 minutes ago, but created long ago (creation basis): due, yet active.
    let active = gc_workspace("active", "2025-06-02T11:50:00Z", warned(json!({})));
    let (busy_workspace, mut busy_build) =
        gc_workspace("busy", "2025-06-01T00:00:00Z", warned(json!({})));
    merge(&mut busy_build, json!({ "job_status": "running" }));
    let (mut prebuild, prebuild_build) =
        gc_workspace("prebuild", "2025-06-01T00:00:00Z", json!({}));
    merge(&mut prebuild, json!({ "owner": "prebuilds" }));
    let result = plan(&gc_snapshot(
        gc,
        vec![protected, active, (busy_workspace, busy_build), (prebuild, prebuild_build)],
    ))
    .gc;
    let reasons: Vec<(String, Option<GcSkipReason>)> =
        result.actions.iter().map(|action| (action.workspace_id.clone(), action.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            ("protected".to_owned(), Some(GcSkipReason::Protected)),
            ("active".to_owned(), Some(GcSkipReason::Active)),
            ("busy".to_owned(), Some(GcSkipReason::InProgress)),
        ]
    );
}

#[test]
fn a_template_can_exempt_its_workspaces_and_gc_off_plans_nothing() {
    let old = || gc_workspace("a", "2025-01-01T00:00:00Z", json!({}));
    let exempt = snapshot(
        json!({ "gc": { "ttl_s": 86400 } }),
        vec![template(json!({ "gc": { "enabled": false } }))],
        vec![],
        vec![old()],
    );
    assert!(plan(&exempt).gc.actions.is_empty());
    let off = snapshot(json!({}), vec![template(json!({}))], vec![], vec![old()]);
    assert!(plan(&off).gc.actions.is_empty() && !plan(&off).gc.safety_valve_tripped);
}

#[test]
fn extreme_durations_and_dates_plan_without_panicking() {
    // Every duration at u64::MAX and dates at the calendar's edges: the planner saturates
    // ("never", "since always") instead of overflowing chrono's arithmetic.
    let huge = u64::MAX;
    let settings = json!({
        "reconciler": { "backoff_interval_s": huge, "backoff_lookback_s": huge },
        "gc": { "ttl_s": huge, "warn_before_s": 1, "active_grace_s": huge },
    });
    let (failed, failed_build) =
        prebuild("ws-f", "2025-06-02T11:00:00Z", json!({ "job_status": "failed" }));
    let (user, mut user_build) = prebuild("ws-u", "9999-12-31T00:00:00Z", json!({}));
    merge(&mut user_build, json!({ "initiator": "user", "preset_id": null }));
    let mut user = user;
    merge(&mut user, json!({ "owner": "user:u1", "last_used_at": "0001-01-01T00:00:00Z" }));
    let templates = vec![template(json!({
        "schedule": { "failure_ttl_s": huge, "time_til_dormant_s": huge,
                      "time_til_dormant_autodelete_s": huge, "default_ttl_s": huge },
        "gc": { "ttl_s": huge, "warn_before_s": huge }
    }))];
    let document = snapshot(
        settings,
        templates,
        vec![preset(json!({ "ttl_s": huge }))],
        vec![(failed, failed_build), (user, user_build)],
    );
    let planned = plan(&document);
    let pool = &planned.reconciler.presets[0];
    // The failed build starts a backoff that lasts "forever" (saturated), not a panic.
    assert!(matches!(pool.actions.as_slice(), [PoolAction::Backoff { .. }]), "{pool:?}");
    assert!(pool.backoff_until.is_some());
}

mod housekeeping {
    use super::*;
    use crate::planner::housekeeping::{LeftoverReason, Retention, leftovers};
    use crate::planner::snapshot::Index;

    fn clean(snapshot: &Snapshot, retention: Retention) -> Vec<(String, LeftoverReason)> {
        let index = Index::new(snapshot);
        let plan = crate::planner::reconcile::plan(&index);
        leftovers(&index, &plan, retention, snapshot.now)
            .into_iter()
            .map(|leftover| (leftover.workspace_id, leftover.reason))
            .collect()
    }

    const DAY: Retention = Retention { failed_after_s: 86_400, keep_failed: 2 };

    #[test]
    fn canceled_creates_are_cleaned_up_and_running_ones_are_not() {
        let document = snapshot(
            json!({}),
            vec![template(json!({}))],
            vec![preset(json!({ "desired_instances": 1 }))],
            vec![
                prebuild("ok", "2025-06-02T10:00:00Z", json!({})),
                prebuild("gone", "2025-06-02T10:00:00Z", json!({ "job_status": "canceled" })),
            ],
        );
        assert_eq!(clean(&document, DAY), vec![("gone".to_owned(), LeftoverReason::Canceled)]);
    }

    #[test]
    fn failed_prebuilds_beyond_the_newest_kept_are_deleted_only_after_the_retention() {
        let failed = |id: &str, at: &str| {
            prebuild(id, at, json!({ "job_status": "failed", "job_completed_at": at }))
        };
        let document = snapshot(
            json!({}),
            vec![template(json!({}))],
            vec![preset(json!({}))],
            vec![
                failed("f1", "2025-05-30T12:00:00Z"),
                failed("f2", "2025-05-31T12:00:00Z"),
                failed("f3", "2025-06-02T11:00:00Z"),
                failed("f4", "2025-06-02T11:30:00Z"),
                failed("f5", "2025-06-02T11:45:00Z"),
            ],
        );
        // f5 and f4 are kept as evidence; f3 is too young; f1 and f2 go.
        let mut cleaned = clean(&document, DAY);
        cleaned.sort();
        assert_eq!(
            cleaned,
            vec![
                ("f1".to_owned(), LeftoverReason::Failed),
                ("f2".to_owned(), LeftoverReason::Failed)
            ]
        );
        let keep_all = Retention { failed_after_s: 86_400, keep_failed: 5 };
        assert!(clean(&document, keep_all).is_empty());
    }

    #[test]
    fn a_lowered_desired_count_cancels_the_newest_unstarted_creates() {
        let pending = |id: &str, at: &str| prebuild(id, at, json!({ "job_status": "pending" }));
        let document = snapshot(
            json!({}),
            vec![template(json!({}))],
            vec![preset(json!({ "desired_instances": 2 }))],
            vec![
                prebuild("ready", "2025-06-02T10:00:00Z", json!({})),
                pending("q1", "2025-06-02T11:00:00Z"),
                pending("q2", "2025-06-02T11:10:00Z"),
                pending("q3", "2025-06-02T11:20:00Z"),
                prebuild("busy", "2025-06-02T11:30:00Z", json!({ "job_status": "running" })),
            ],
        );
        // Desired 2, one running: one more is wanted, four are in progress (one already
        // building): the three newest unstarted are canceled... but only three exist and
        // the excess is 3, so q1, q2, q3 go, newest first; `busy` builds on.
        assert_eq!(
            clean(&document, DAY),
            vec![
                ("q3".to_owned(), LeftoverReason::Unwanted),
                ("q2".to_owned(), LeftoverReason::Unwanted),
                ("q1".to_owned(), LeftoverReason::Unwanted),
            ]
        );
        let enough = snapshot(
            json!({}),
            vec![template(json!({}))],
            vec![preset(json!({ "desired_instances": 3 }))],
            vec![
                prebuild("ready", "2025-06-02T10:00:00Z", json!({})),
                pending("q1", "2025-06-02T11:00:00Z"),
            ],
        );
        assert!(clean(&enough, DAY).is_empty());
    }
}

#[test]
fn interrupted_prebuild_builds_never_count_toward_backoff_or_the_hard_limit() {
    // The store hands interrupted jobs to the planner as `canceled` (a crash is not the
    // template's failure): three of them in a row neither back off nor hard-limit.
    let settings = json!({ "reconciler": { "failure_hard_limit": 3, "backoff_lookback_s": 3600 } });
    let interrupted = |id: &str, at: &str| prebuild(id, at, json!({ "job_status": "canceled" }));
    let document = snapshot(
        settings,
        vec![template(json!({}))],
        vec![preset(json!({ "desired_instances": 1 }))],
        vec![
            interrupted("c1", "2025-06-02T11:00:00Z"),
            interrupted("c2", "2025-06-02T11:10:00Z"),
            interrupted("c3", "2025-06-02T11:20:00Z"),
        ],
    );
    let pool = preset_plan(&document);
    assert!(!pool.hard_limited);
    assert_eq!(pool.backoff_until, None);
    assert!(matches!(pool.actions.as_slice(), [PoolAction::Create { count: 1 }]), "{pool:?}");
}

#[test]
fn a_prebuild_unhealthy_past_the_grace_is_replaced_and_one_within_it_only_waits() {
    let sick = |id: &str, since: &str| {
        let (mut workspace, build) = prebuild(id, "2025-06-02T11:00:00Z", json!({}));
        merge(&mut workspace, json!({ "agents_ready": false, "unhealthy_since": since }));
        (workspace, build)
    };
    let plan = preset_plan(&snapshot(
        json!({ "reconciler": { "unhealthy_replace_after_s": 600 } }),
        vec![template(json!({}))],
        vec![preset(json!({}))],
        vec![sick("a", "2025-06-02T11:49:59Z"), sick("b", "2025-06-02T11:50:00Z")],
    ));
    // a: 10m01s unhealthy (past the grace); b: exactly 10m (not yet).
    assert_eq!(plan.state.unhealthy, 1);
    assert_eq!(plan.state.eligible, 0, "an unhealthy prebuild is never claimable");
    assert!(
        matches!(
            &plan.actions[..],
            [PoolAction::Delete { reason: super::plan::DeleteReason::Unhealthy, workspace_ids },
             PoolAction::Create { count: 1 }] if workspace_ids == &["a".to_owned()]
        ),
        "{:?}",
        plan.actions
    );
    let serialized = serde_json::to_value(&plan).unwrap();
    assert_eq!(serialized["actions"][0]["reason"], "unhealthy");
    // Without health data the state serializes as before (no `unhealthy` key).
    let healthy = preset_plan(&snapshot(
        json!({}),
        vec![template(json!({}))],
        vec![preset(json!({}))],
        vec![prebuild("c", "2025-06-02T11:00:00Z", json!({}))],
    ));
    assert!(serde_json::to_value(healthy.state).unwrap().get("unhealthy").is_none());
}
