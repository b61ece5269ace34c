//! The health monitor: after a start build, each running container workspace is checked
//! again at its probe's `interval` (10s without a probe): its container must run, and its
//! readiness probe must pass. `failure_threshold` failures in a row make it `unhealthy`
//! (a container that stopped or vanished at once), with the last error; one pass makes it
//! `healthy` again. The verdict is stored (`store::health`), so an unhealthy prebuild is
//! not claimable, the reconciler replaces one unhealthy past `unhealthy_replace_after`,
//! and the API, the logs and `workspaced_workspaces_unhealthy` show it. A start build
//! brings a stopped or vanished container back.
//!
//! Probe state (failures in a row, next check) lives in memory: after a restart every
//! workspace is checked at once and keeps its stored verdict until the checks say
//! otherwise, so a daemon restart never changes a running workspace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::activity::Tracker as ActivityTracker;
use crate::config::container::{CONTAINER_BACKEND, ProbeSpec, parse_spec};
use crate::context::LoopCtx;
use crate::domain::activity::ActivitySource;
use crate::error::error_chain;
use crate::planner::health::{Check, Verdict, judge};
use crate::provisioner::container::engine::{self, Engine};
use crate::provisioner::container::{connections, orphans, probe};
use crate::store::health::{self, Running};

/// How often the monitor looks for due checks.
pub const TICK: Duration = Duration::from_secs(1);
/// Checks running at the same time, at most.
const PARALLEL: usize = 64;
/// The interval of a workspace whose template declares no probe.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

struct Tracker {
    build_number: i64,
    next_at: Instant,
    failures: u32,
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    pub checked: u64,
    pub changed: u64,
    /// Workspaces with connections that bypass the proxy, reported as `backend` activity.
    pub backend_active: u64,
    /// Unhealthy running workspaces after the tick, by template name.
    pub unhealthy: BTreeMap<String, u64>,
}

pub struct Monitor {
    ctx: LoopCtx,
    trackers: HashMap<String, Tracker>,
    /// Templates that had unhealthy workspaces (their gauge is reset when none are left).
    reported: Vec<String>,
    /// Workspace builds whose connection table could not be read (warned once).
    connection_errors: HashSet<(String, i64)>,
}

impl Monitor {
    pub fn new(ctx: LoopCtx) -> Monitor {
        Monitor {
            ctx,
            trackers: HashMap::new(),
            reported: Vec::new(),
            connection_errors: HashSet::new(),
        }
    }

    /// Runs until `shutdown`; counts engine orphans at start and every
    /// `provisioner.orphan_check_interval`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut orphans_checked: Option<Instant> = None;
        loop {
            let interval = self.ctx.config.borrow().provisioner.orphan_check_interval.as_duration();
            if orphans_checked.is_none_or(|at| at.elapsed() >= interval) {
                orphans_checked = Some(Instant::now());
                self.count_orphans().await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
            let started = Instant::now();
            let result = self.tick().await;
            self.ctx.metrics.health.tick_duration.observe(started.elapsed().as_secs_f64());
            if let Err(error) = result {
                tracing::warn!(error = %error_chain(&error), "health check tick failed; retrying");
            }
        }
    }

    async fn count_orphans(&self) {
        let config = Arc::clone(&self.ctx.config.borrow());
        if !orphans::wanted(&config) {
            return;
        }
        match orphans::find(&self.ctx.store, &config).await {
            Ok(found) => {
                self.ctx.metrics.health.orphans.set(i64::try_from(found.len()).unwrap_or(i64::MAX));
                if !found.is_empty() {
                    let names: Vec<&str> =
                        found.iter().map(|orphan| orphan.name.as_str()).collect();
                    tracing::warn!(count = found.len(), names = ?names, "container engine objects of no live workspace; the next GC run removes them");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list the container engine's objects"),
        }
    }

    /// Checks every workspace that is due and stores the verdicts that changed.
    pub async fn tick(&mut self) -> Result<HealthReport, crate::store::StoreError> {
        let running = self.ctx.store.read(|conn| health::running(conn, CONTAINER_BACKEND)).await?;
        let now = Instant::now();
        self.trackers.retain(|id, tracker| {
            running.iter().any(|r| &r.workspace_id == id && r.build_number == tracker.build_number)
        });
        self.connection_errors.retain(|(id, build)| {
            running.iter().any(|r| &r.workspace_id == id && r.build_number == *build)
        });
        let due: Vec<Running> = running
            .iter()
            .filter(|workspace| {
                self.trackers
                    .get(&workspace.workspace_id)
                    .is_none_or(|tracker| tracker.next_at <= now)
            })
            .cloned()
            .collect();
        let mut report = HealthReport::default();
        // The new verdicts of the workspaces checked now (error = unhealthy).
        let mut verdicts: BTreeMap<String, Option<String>> = BTreeMap::new();
        if !due.is_empty() {
            let config = self.ctx.config.borrow().provisioner.container.clone();
            let engine = Engine::connect(&config).await.map_err(|error| error.to_string());
            // One listing gives every container's state and ports.
            let containers = match &engine {
                Ok(engine) => engine.managed_containers().await.map_err(|error| error.to_string()),
                Err(error) => Err(error.clone()),
            };
            let containers = Arc::new(containers);
            for chunk in due.chunks(PARALLEL) {
                let mut checks = tokio::task::JoinSet::new();
                for workspace in chunk {
                    let engine = engine.clone();
                    let containers = Arc::clone(&containers);
                    let workspace = workspace.clone();
                    let tracker = Arc::clone(&self.ctx.activity);
                    checks.spawn(async move {
                        let config: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_str(&workspace.provisioner_config).unwrap_or_default();
                        let spec = parse_spec(&config).ok();
                        let ready = spec.as_ref().and_then(|spec| spec.ready.clone());
                        let (result, direct) = match (&engine, containers.as_ref()) {
                            (Ok(engine), Ok(containers)) => {
                                // Sampled before the probe, whose own connection is not use.
                                let direct = direct_connections(
                                    engine,
                                    containers,
                                    &workspace,
                                    spec.as_ref(),
                                    &tracker,
                                )
                                .await;
                                (check(engine, containers, &workspace, spec.as_ref()).await, direct)
                            }
                            (Err(error), _) | (_, Err(error)) => {
                                (Check::Failed(error.clone()), Ok(0))
                            }
                        };
                        (workspace, ready, result, direct)
                    });
                }
                while let Some(joined) = checks.join_next().await {
                    let Ok((workspace, ready, result, direct)) = joined else { continue };
                    report.checked += 1;
                    if self.backend_activity(&workspace, direct).await {
                        report.backend_active += 1;
                    }
                    self.record(&workspace, ready.as_ref(), result, &mut verdicts);
                }
            }
            report.changed = self.store_verdicts(&running, &verdicts).await?;
        }
        for workspace in &running {
            let unhealthy = match verdicts.get(&workspace.workspace_id) {
                Some(verdict) => verdict.is_some(),
                None => workspace.health.as_deref() == Some("unhealthy"),
            };
            if unhealthy {
                *report.unhealthy.entry(workspace.template_name.clone()).or_default() += 1;
            }
        }
        self.publish(&report);
        Ok(report)
    }

    /// Reports connections that bypass the proxy as `backend` activity; an unreadable
    /// connection table is logged once per workspace start, not at every check.
    /// True when there were such connections.
    async fn backend_activity(
        &mut self,
        workspace: &Running,
        direct: Result<usize, String>,
    ) -> bool {
        match direct {
            Ok(0) => false,
            Ok(_) => {
                self.ctx.report_activity(&workspace.workspace_id, ActivitySource::Backend).await;
                true
            }
            Err(error) => {
                if self
                    .connection_errors
                    .insert((workspace.workspace_id.clone(), workspace.build_number))
                {
                    tracing::warn!(workspace_id = %workspace.workspace_id, %error, "cannot count the container's connections (connection_activity); its direct use is not seen");
                }
                false
            }
        }
    }

    /// Updates the tracker after one check; `verdicts` gets the new verdict when the
    /// failures reached the threshold (or the container is gone) or the check passed.
    fn record(
        &mut self,
        workspace: &Running,
        ready: Option<&ProbeSpec>,
        check: Check,
        verdicts: &mut BTreeMap<String, Option<String>>,
    ) {
        let interval = ready.map_or(DEFAULT_INTERVAL, |probe| probe.interval.as_duration());
        let threshold = ready.map_or(1, |probe| probe.failure_threshold);
        let tracker = self.trackers.entry(workspace.workspace_id.clone()).or_insert(Tracker {
            build_number: workspace.build_number,
            next_at: Instant::now(),
            failures: 0,
        });
        tracker.next_at = Instant::now() + interval;
        let result = if check == Check::Passed { "pass" } else { "fail" };
        self.ctx.metrics.health.probes.with_label_values(&[result]).inc();
        let start_period = ready.map_or(0, |probe| probe.start_period.as_secs());
        let warming_up = workspace.started_at.is_some_and(|started| {
            self.ctx.clock.now() < crate::domain::time::after(started, start_period)
        });
        let (failures, verdict) = judge(tracker.failures, threshold, check, warming_up);
        tracker.failures = failures;
        match verdict {
            Verdict::Healthy => {
                verdicts.insert(workspace.workspace_id.clone(), None);
            }
            Verdict::Unhealthy(error) => {
                verdicts.insert(workspace.workspace_id.clone(), Some(error));
            }
            Verdict::Unchanged => {}
        }
    }

    async fn store_verdicts(
        &self,
        running: &[Running],
        verdicts: &BTreeMap<String, Option<String>>,
    ) -> Result<u64, crate::store::StoreError> {
        let changes: Vec<(Running, Option<String>)> = running
            .iter()
            .filter_map(|workspace| {
                let verdict = verdicts.get(&workspace.workspace_id)?.clone();
                let stored_error = workspace.health_error.clone();
                let same = match &verdict {
                    None => workspace.health.as_deref() == Some("healthy"),
                    Some(error) => {
                        workspace.health.as_deref() == Some("unhealthy")
                            && stored_error.as_deref() == Some(error)
                    }
                };
                (!same).then(|| (workspace.clone(), verdict))
            })
            .collect();
        if changes.is_empty() {
            return Ok(0);
        }
        let now = self.ctx.clock.now();
        let written = changes.clone();
        let changed = self
            .ctx
            .store
            .write(move |tx| {
                let mut changed = 0u64;
                for (workspace, error) in &written {
                    if health::set(
                        tx,
                        &workspace.workspace_id,
                        workspace.build_number,
                        error.as_deref(),
                        now,
                    )? {
                        changed += 1;
                    }
                }
                Ok::<_, crate::store::StoreError>(changed)
            })
            .await?;
        for (workspace, error) in &changes {
            match (error, workspace.health.as_deref()) {
                (Some(error), Some("unhealthy")) => {
                    tracing::debug!(workspace_id = %workspace.workspace_id, %error, "workspace still unhealthy")
                }
                (Some(error), _) => tracing::warn!(
                    workspace_id = %workspace.workspace_id,
                    template = %workspace.template_name,
                    prebuild = workspace.prebuild,
                    %error,
                    "workspace is unhealthy"
                ),
                (None, _) => tracing::info!(
                    workspace_id = %workspace.workspace_id,
                    template = %workspace.template_name,
                    "workspace is healthy"
                ),
            }
        }
        Ok(changed)
    }

    fn publish(&mut self, report: &HealthReport) {
        let gauge = &self.ctx.metrics.health.unhealthy;
        for template in &self.reported {
            if !report.unhealthy.contains_key(template) {
                gauge.with_label_values(&[template]).set(0);
            }
        }
        for (template, count) in &report.unhealthy {
            gauge.with_label_values(&[template]).set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        self.reported = report.unhealthy.keys().cloned().collect();
    }
}

/// One check: the container must run, then the probe (if any) must pass.
async fn check(
    engine: &Engine,
    containers: &HashMap<String, engine::ContainerInfo>,
    workspace: &Running,
    spec: Option<&crate::config::container::ContainerSpec>,
) -> Check {
    let name = engine::container_name(&workspace.workspace_id);
    let Some(info) = containers.get(&name) else {
        return Check::NotRunning(format!("container {name} vanished"));
    };
    if !info.running {
        return Check::NotRunning(format!("container {name} is {}", info.status));
    }
    let (Some(spec), Some(ready)) = (spec, spec.and_then(|spec| spec.ready.as_ref())) else {
        return Check::Passed;
    };
    let addresses = probe::addresses(spec, info);
    match probe::check_once(engine, &name, ready, &addresses).await {
        Ok(()) => Check::Passed,
        Err(error) => Check::Failed(error),
    }
}

/// Established connections to the workspace's ports that did not come through the app
/// proxy (template opt-in: `connection_activity`); 0 when not wanted or the container
/// does not run; an error when its connection table cannot be read.
async fn direct_connections(
    engine: &Engine,
    containers: &HashMap<String, engine::ContainerInfo>,
    workspace: &Running,
    spec: Option<&crate::config::container::ContainerSpec>,
    tracker: &ActivityTracker,
) -> Result<usize, String> {
    let Some(spec) = spec.filter(|spec| spec.connection_activity) else { return Ok(0) };
    let name = engine::container_name(&workspace.workspace_id);
    let Some(listed) = containers.get(&name).filter(|info| info.running) else { return Ok(0) };
    let pid = match engine.inspect(&name).await {
        Ok(Some(info)) => info.pid,
        Ok(None) => None,
        Err(error) => {
            tracing::debug!(workspace_id = %workspace.workspace_id, %error, "cannot inspect the container for its connections");
            None
        }
    };
    let Some(pid) = pid else { return Ok(0) };
    let ports: Vec<u16> = spec.ports.values().copied().collect();
    let seen = connections::established(pid, &ports).await?;
    let proxied: usize = ports
        .iter()
        .filter_map(|port| listed.published.get(port))
        .map(|address| tracker.upstream_connections(address))
        .sum();
    Ok(seen.saturating_sub(proxied))
}
