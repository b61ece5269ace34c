//! The loops' SQL candidate queries against the planner's rules, on generated fleets in a
//! real SQLite file: every workspace the planner would transition from the full snapshot
//! must be among the lifecycle query's candidates (the query may find more; the executor
//! re-judges each), and the GC run, which reads only the workspaces old enough to be due,
//! must decide exactly what the planner decides from everything. A rule the SQL misses
//! would silently never fire. (The reconciler reads the full snapshot: nothing to check.)

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rusqlite::params;

use workspaced::config::Config;
use workspaced::domain::{DEFAULT_ORGANIZATION_ID, PREBUILDS_USER_ID};
use workspaced::gc;
use workspaced::planner::snapshot::{Fraction, GcBasis, GcSettings, Index};
use workspaced::planner::{gc as planner_gc, lifecycle};
use workspaced::store::{Store, StoreOptions, lifecycle as store_lifecycle, snapshot};

const TRANSITIONS: [&str; 3] = ["start", "stop", "delete"];
/// The summary column's values (an interrupted job is summarized as `canceled`).
const STATUSES: [&str; 6] = ["pending", "running", "succeeded", "failed", "canceling", "canceled"];
const SCHEDULES: [&str; 3] = ["0 9 * * *", "CRON_TZ=Europe/Berlin 30 8 * * 1-5", "*/15 * * * *"];

#[derive(Debug, Clone)]
struct TemplateCase {
    default_ttl_s: i64,
    failure_ttl_s: i64,
    time_til_dormant_s: i64,
    autodelete_s: i64,
    autostart_enabled: bool,
    autostop_enabled: bool,
    autostart_days: u8,
}

#[derive(Debug, Clone)]
struct WorkspaceCase {
    owner: usize,
    template: usize,
    transition: usize,
    status: usize,
    /// Minutes relative to now.
    created: i64,
    last_used: i64,
    build_created: i64,
    deadline: Option<i64>,
    dormant: Option<i64>,
    deleting: Option<i64>,
    schedule: Option<usize>,
}

fn template_case() -> impl Strategy<Value = TemplateCase> {
    (
        prop::sample::select(vec![0i64, 3600, 8 * 3600]),
        prop::sample::select(vec![0i64, 600, 86_400]),
        prop::sample::select(vec![0i64, 3600, 7 * 86_400]),
        prop::sample::select(vec![0i64, 3600, 30 * 86_400]),
        any::<bool>(),
        any::<bool>(),
        0u8..128,
    )
        .prop_map(
            |(
                default_ttl_s,
                failure_ttl_s,
                time_til_dormant_s,
                autodelete_s,
                autostart_enabled,
                autostop_enabled,
                autostart_days,
            )| TemplateCase {
                default_ttl_s,
                failure_ttl_s,
                time_til_dormant_s,
                autodelete_s,
                autostart_enabled,
                autostop_enabled,
                autostart_days,
            },
        )
}

fn workspace_case() -> impl Strategy<Value = WorkspaceCase> {
    let minutes = -30_000i64..30_000;
    (
        (0usize..3, 0usize..2, 0usize..TRANSITIONS.len(), 0usize..STATUSES.len()),
        (-60_000i64..0, minutes.clone(), -30_000i64..0),
        (
            prop::option::of(minutes.clone()),
            prop::option::of(-30_000i64..0),
            prop::option::of(minutes),
            prop::option::of(0usize..SCHEDULES.len()),
        ),
    )
        .prop_map(
            |(
                (owner, template, transition, status),
                (created, last_used, build_created),
                (deadline, dormant, deleting, schedule),
            )| WorkspaceCase {
                owner,
                template,
                transition,
                status,
                created,
                last_used: last_used.min(0),
                build_created: build_created.max(created),
                deadline,
                dormant,
                deleting,
                schedule,
            },
        )
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-04T10:17:30Z").unwrap().to_utc()
}

fn at(minutes: i64) -> i64 {
    (now() + Duration::minutes(minutes)).timestamp_millis()
}

fn seed(store: &Store, templates: &[TemplateCase], workspaces: &[WorkspaceCase]) {
    store
        .write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO users (id, username, status, created_at, updated_at)
                   VALUES ('u0', 'active', 'active', 0, 0), ('u1', 'gone', 'suspended', 0, 0);",
            )?;
            for (index, template) in templates.iter().enumerate() {
                tx.execute(
                    "INSERT INTO templates (id, organization_id, name, created_at, updated_at,
                        default_ttl_s, failure_ttl_s, time_til_dormant_s, time_til_dormant_autodelete_s,
                        autostart_enabled, autostop_enabled, autostart_days)
                     VALUES (?1, ?2, ?1, 0, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        format!("t{index}"),
                        DEFAULT_ORGANIZATION_ID,
                        template.default_ttl_s,
                        template.failure_ttl_s,
                        template.time_til_dormant_s,
                        template.autodelete_s,
                        template.autostart_enabled,
                        template.autostop_enabled,
                        template.autostart_days,
                    ],
                )?;
                tx.execute(
                    "INSERT INTO template_versions (id, template_id, name, content_hash, provisioner, created_at)
                     VALUES (?1, ?2, 'v1', 'h', 'local', 0)",
                    params![format!("v{index}"), format!("t{index}")],
                )?;
                tx.execute(
                    "UPDATE templates SET active_version_id = ?1 WHERE id = ?2",
                    params![format!("v{index}"), format!("t{index}")],
                )?;
            }
            for (index, workspace) in workspaces.iter().enumerate() {
                let owner = ["u0", "u1", PREBUILDS_USER_ID][workspace.owner];
                let status = STATUSES[workspace.status];
                let finished = !matches!(status, "pending" | "running" | "canceling");
                tx.execute(
                    "INSERT INTO workspaces (id, organization_id, owner_id, template_id, name,
                        created_at, updated_at, last_used_at, dormant_at, deleting_at,
                        autostart_schedule, latest_build_number, latest_transition,
                        latest_job_status, latest_template_version_id, latest_initiator_id,
                        latest_build_created_at, latest_job_completed_at, latest_deadline)
                     VALUES (?1, ?2, ?3, ?4, ?1, ?5, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?11, ?12, ?3,
                        ?13, ?14, ?15)",
                    params![
                        format!("w{index:03}"),
                        DEFAULT_ORGANIZATION_ID,
                        owner,
                        format!("t{}", workspace.template),
                        at(workspace.created),
                        at(workspace.last_used),
                        workspace.dormant.map(at),
                        workspace.deleting.map(at),
                        workspace.schedule.map(|index| SCHEDULES[index]),
                        TRANSITIONS[workspace.transition],
                        status,
                        format!("v{}", workspace.template),
                        at(workspace.build_created),
                        finished.then(|| at(workspace.build_created + 5)),
                        workspace.deadline.map(at),
                    ],
                )?;
            }
            store_lifecycle::refresh_next_start_all(tx, None)?;
            Ok::<_, workspaced::store::StoreError>(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_lifecycle_query_finds_every_workspace_the_planner_would_transition(
        templates in prop::collection::vec(template_case(), 2),
        workspaces in prop::collection::vec(workspace_case(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(StoreOptions::at(dir.path().join("w.db"))).unwrap();
        seed(&store, &templates, &workspaces);
        let settings = Config::default().planner_settings();
        let (full, candidates) = store
            .read_blocking(move |conn| {
                Ok((
                    snapshot::read(conn, now(), settings)?,
                    store_lifecycle::candidates(conn, lifecycle::tick(now()))?,
                ))
            })
            .unwrap();
        prop_assert_eq!(full.workspaces.len(), workspaces.len(), "every seeded row is read");
        for decision in lifecycle::plan(&Index::new(&full)) {
            prop_assert!(
                candidates.contains(&decision.workspace_id),
                "the planner decides {:?} for {}, the candidate query misses it",
                decision.reason,
                decision.workspace_id
            );
        }
    }
}

/// A template's GC overrides (`None` = the global setting).
#[derive(Debug, Clone)]
struct GcOverride {
    enabled: Option<bool>,
    ttl_s: Option<i64>,
    basis: Option<&'static str>,
    warn_before_s: Option<i64>,
    active_grace_s: Option<i64>,
}

/// A workspace's GC-only state: protection and a warning (minutes relative to now).
#[derive(Debug, Clone)]
struct GcState {
    protected: bool,
    warned: Option<i64>,
}

const TTLS: [i64; 4] = [0, 3600, 86_400, 14 * 86_400];
const WARNS: [i64; 3] = [0, 3600, 86_400];
const GRACES: [i64; 3] = [0, 900, 86_400];

fn gc_override() -> impl Strategy<Value = GcOverride> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(prop::sample::select(TTLS.to_vec())),
        prop::option::of(prop::sample::select(vec!["last_activity", "creation"])),
        prop::option::of(prop::sample::select(WARNS.to_vec())),
        prop::option::of(prop::sample::select(GRACES.to_vec())),
    )
        .prop_map(|(enabled, ttl_s, basis, warn_before_s, active_grace_s)| GcOverride {
            enabled,
            ttl_s,
            basis,
            warn_before_s,
            active_grace_s,
        })
}

fn gc_settings() -> impl Strategy<Value = GcSettings> {
    (
        prop::sample::select(TTLS.to_vec()),
        any::<bool>(),
        prop::sample::select(WARNS.to_vec()),
        prop::sample::select(GRACES.to_vec()),
        prop::sample::select(vec![25u128, 100]),
        prop::sample::select(vec![2u64, 100]),
    )
        .prop_map(|(ttl_s, creation, warn_before_s, active_grace_s, percent, max)| {
            GcSettings {
                enabled: true,
                ttl_s: ttl_s as u64,
                basis: if creation { GcBasis::Creation } else { GcBasis::LastActivity },
                warn_before_s: warn_before_s as u64,
                active_grace_s: active_grace_s as u64,
                max_delete_fraction: Fraction::from_decimal(percent, 2),
                max_deletions_per_run: max,
            }
        })
}

fn set_gc_state(store: &Store, overrides: &[GcOverride], states: &[GcState]) {
    store
        .write_blocking(|tx| {
            for (index, gc) in overrides.iter().enumerate() {
                tx.execute(
                    "UPDATE templates SET gc_enabled = ?2, gc_ttl_s = ?3, gc_basis = ?4,
                        gc_warn_before_s = ?5, gc_active_grace_s = ?6 WHERE id = ?1",
                    params![
                        format!("t{index}"),
                        gc.enabled,
                        gc.ttl_s,
                        gc.basis,
                        gc.warn_before_s,
                        gc.active_grace_s
                    ],
                )?;
            }
            for (index, state) in states.iter().enumerate() {
                tx.execute(
                    "UPDATE workspaces SET protected = ?2, gc_warned_at = ?3 WHERE id = ?1",
                    params![format!("w{index:03}"), state.protected, state.warned.map(at)],
                )?;
            }
            Ok::<_, workspaced::store::StoreError>(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_gc_run_decides_from_its_candidates_what_the_planner_decides_from_everything(
        templates in prop::collection::vec(template_case(), 2),
        overrides in prop::collection::vec(gc_override(), 2),
        settings in gc_settings(),
        fleet in prop::collection::vec(
            (workspace_case(), any::<bool>(), prop::option::of(-30_000i64..0)), 1..40),
    ) {
        let (workspaces, states): (Vec<_>, Vec<_>) = fleet
            .into_iter()
            .map(|(workspace, protected, warned)| (workspace, GcState { protected, warned }))
            .unzip();
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(StoreOptions::at(dir.path().join("w.db"))).unwrap();
        seed(&store, &templates, &workspaces);
        set_gc_state(&store, &overrides, &states);
        let mut full_settings = Config::default().planner_settings();
        full_settings.gc = Some(settings.clone());
        let data_dir = dir.path().to_path_buf();
        let (full, run) = store
            .read_blocking(move |conn| {
                Ok((
                    snapshot::read(conn, now(), full_settings)?,
                    gc::plan_run(conn, &settings, &data_dir, now())?,
                ))
            })
            .unwrap();
        prop_assert_eq!(full.workspaces.len(), workspaces.len(), "every seeded row is read");
        let mut expected = planner_gc::plan(&Index::new(&full));
        expected.actions.sort_by(|a, b| a.workspace_id.cmp(&b.workspace_id));
        let mut decided: Vec<_> = run.judged.into_iter().map(|judged| judged.action).collect();
        decided.sort_by(|a, b| a.workspace_id.cmp(&b.workspace_id));
        prop_assert_eq!(decided, expected.actions);
        prop_assert_eq!(run.safety_valve_tripped, expected.safety_valve_tripped);
    }
}
