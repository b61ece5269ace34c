//! `workspaced bench run`: measures the daemon's paths on a seeded directory, each with
//! min/median/max over repeated iterations and, where one exists, its floor in the same run.
//!
//! In this process, on the seeded database: the reconcile cycle as the loop runs it
//! (`loops::run_once`: snapshot, plan, actions, metrics), a lifecycle tick with nothing due
//! and one with the seed's 100 due (each on a fresh copy of the database), GC selection.
//! Then `serve` on the directory as a child process: `/metrics` over HTTP during reconcile
//! cycles (partial scrapes counted), its RSS over `cycles` cycles, and claims from `clients`
//! keep-alive HTTP clients while its reconciler runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::{Config, ConfigSource};
use crate::context::LoopCtx;
use crate::domain::LoopKind;
use crate::store::{Store, StoreOptions};

use super::BenchError;
use super::http::{self, Serve};
use super::seed::SeedInfo;

pub struct RunArgs {
    pub dir: PathBuf,
    pub json: bool,
    pub iterations: usize,
    pub cycles: usize,
    pub clients: usize,
    pub claims: usize,
}

/// One measured path.
#[derive(Debug, Clone)]
pub struct Row {
    pub path: &'static str,
    pub samples: Vec<Duration>,
    pub floor: Option<Duration>,
    pub extra: serde_json::Map<String, Value>,
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

fn median(samples: &[Duration]) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted.get(index.min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

impl Row {
    fn new(path: &'static str, samples: Vec<Duration>, floor: Option<Duration>) -> Row {
        Row { path, samples, floor, extra: serde_json::Map::new() }
    }

    fn with(mut self, key: &str, value: Value) -> Row {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub fn to_json(&self) -> Value {
        let min = self.samples.iter().min().copied();
        let max = self.samples.iter().max().copied();
        let mut row = json!({
            "path": self.path,
            "median_ms": median(&self.samples).map(ms),
            "min_ms": min.map(ms),
            "max_ms": max.map(ms),
            "floor_ms": self.floor.map(ms),
            "n": self.samples.len(),
        });
        if let Some(object) = row.as_object_mut() {
            object.extend(self.extra.clone());
        }
        row
    }
}

fn timed<T>(started: Instant, value: T) -> (Duration, T) {
    (started.elapsed(), value)
}

pub fn run(args: &RunArgs) -> Result<Value, BenchError> {
    let info_path = args.dir.join("seed.json");
    let text = std::fs::read_to_string(&info_path).map_err(|e| BenchError::io(&info_path, e))?;
    let info: SeedInfo = serde_json::from_str(&text)
        .map_err(|e| BenchError::Input(format!("{}: {e}", info_path.display())))?;
    let config_path = args.dir.join("workspaced.toml");
    let mut config = crate::config::load(&ConfigSource::resolve(Some(&config_path)))
        .map_err(|e| BenchError::Run(e.to_string()))?;
    // The directory's own data, also when it was copied from where it was seeded.
    let data_dir = args.dir.join("data");
    config.storage.data_dir = data_dir.clone();
    let iterations = args.iterations.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Run(format!("cannot start the async runtime: {e}")))?;
    let mut rows = runtime.block_on(in_process(&config, &info, &args.dir, iterations))?;
    drop(runtime);
    let token_path = args.dir.join("token");
    let token = std::fs::read_to_string(&token_path).map_err(|e| BenchError::io(&token_path, e))?;
    let serve = Serve::start(&config_path, &data_dir)?;
    rows.extend(serve_rows(&serve, &info, args.cycles.max(1), iterations)?);
    rows.push(claims(&serve, &info, token.trim(), args.clients.max(1), args.claims)?);
    drop(serve);
    Ok(json!({
        "size": {
            "presets": info.presets,
            "workspaces": info.workspaces,
            "builds_per_workspace": info.builds_per_workspace,
        },
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    }))
}

fn loop_ctx(config: &Config, store: Store, clock: Arc<dyn Clock>) -> Result<LoopCtx, BenchError> {
    let metrics = crate::metrics::Metrics::new().map_err(|e| BenchError::Run(e.to_string()))?;
    let (_sender, receiver) = tokio::sync::watch::channel(Arc::new(config.clone()));
    Ok(LoopCtx {
        store,
        clock,
        metrics,
        config: receiver,
        activity: Arc::new(crate::activity::Tracker::new()),
    })
}

async fn in_process(
    config: &Config,
    info: &SeedInfo,
    dir: &Path,
    iterations: usize,
) -> Result<Vec<Row>, BenchError> {
    let options = crate::app::store_options(&config.storage);
    let (store, _) = Store::open(options.clone())?;
    let ctx = loop_ctx(config, store.clone(), Arc::new(SystemClock))?;
    let loop_error = |e: crate::context::LoopError| BenchError::Run(e.to_string());
    let mut rows = Vec::new();

    let (mut cycle, mut floor, mut actions) = (Vec::new(), Vec::new(), 0);
    for _ in 0..iterations {
        let (took, report) = timed(Instant::now(), {
            crate::loops::run_once(LoopKind::Reconciler, &ctx).await.map_err(loop_error)?
        });
        cycle.push(took);
        actions += report.actions;
        let started = Instant::now();
        store.read(crate::store::bench::scan).await?;
        floor.push(started.elapsed());
    }
    rows.push(
        Row::new("reconcile cycle", cycle, median(&floor))
            .with("actions", json!(actions))
            .with("floor", json!("bare SQL read of the rows the snapshot reads")),
    );

    let (mut due0, mut due_actions) = (Vec::new(), 0);
    for _ in 0..iterations {
        let (took, report) = timed(Instant::now(), {
            crate::loops::run_once(LoopKind::Lifecycle, &ctx).await.map_err(loop_error)?
        });
        due0.push(took);
        due_actions += report.actions;
    }
    rows.push(Row::new("lifecycle tick, 0 due", due0, None).with("actions", json!(due_actions)));

    // A tick with the seed's workspaces due writes: each run gets its own copy.
    let copies = tempfile_dir(dir)?;
    let at = crate::domain::time::after(info.due_at, 1800);
    let (mut due, mut due_actions) = (Vec::new(), Vec::new());
    for n in 0..iterations.min(5) {
        let path = copies.join(format!("copy-{n}.db"));
        crate::store::bench::copy(&options.path, &path)?;
        let (copy, _) = Store::open(StoreOptions { path: path.clone(), ..options.clone() })?;
        let copy_ctx = loop_ctx(config, copy, Arc::new(ManualClock::new(at)))?;
        let (took, report) = timed(Instant::now(), {
            crate::loops::run_once(LoopKind::Lifecycle, &copy_ctx).await.map_err(loop_error)?
        });
        due.push(took);
        due_actions.push(report.actions);
        drop(copy_ctx);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    let _ = std::fs::remove_dir_all(&copies);
    rows.push(
        Row::new("lifecycle tick, 100 due", due, None)
            .with("due", json!(info.due))
            .with("actions", json!(due_actions.first().copied().unwrap_or(0))),
    );

    let mut gc = Vec::new();
    let mut judged = 0;
    if let Some(settings) = config.planner_settings().gc {
        let data_dir = config.storage.data_dir.clone();
        for _ in 0..iterations {
            let (settings, data_dir) = (settings.clone(), data_dir.clone());
            let started = Instant::now();
            let plan =
                store.read(move |conn| crate::gc::plan_run(conn, &settings, &data_dir, at)).await?;
            gc.push(started.elapsed());
            judged = plan.judged.len();
        }
    }
    rows.push(Row::new("gc selection", gc, None).with("judged", json!(judged)));
    Ok(rows)
}

fn tempfile_dir(dir: &Path) -> Result<PathBuf, BenchError> {
    let path = dir.join("bench-copies");
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).map_err(|e| BenchError::io(&path, e))?;
    Ok(path)
}

const CYCLES_SERIES: &str = "workspaced_prebuilt_workspaces_reconcile_duration_seconds_count";
const DESIRED_SERIES: &str = "workspaced_prebuilt_workspaces_desired{";

/// `/metrics` scraped once a second while `cycles` reconcile cycles run, the RSS sampled
/// with each scrape; then the floor: the same body from a static server.
fn serve_rows(
    serve: &Serve,
    info: &SeedInfo,
    cycles: usize,
    iterations: usize,
) -> Result<Vec<Row>, BenchError> {
    let count = |body: &str, series: &str| -> f64 {
        body.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
    };
    let (start_rss, _) = serve.rss()?;
    let mut scrapes = Vec::new();
    let (mut partial, mut body, mut bytes) = (0, String::new(), 0);
    let mut first_cycle_rss = None;
    let mut seen = 0.0;
    let deadline = Instant::now() + Duration::from_secs(120 + 60 * cycles as u64);
    while seen < cycles as f64 {
        if Instant::now() > deadline {
            return Err(BenchError::Run(format!(
                "serve ran {seen} reconcile cycles in the time {cycles} were given"
            )));
        }
        let started = Instant::now();
        let (status, text) = http::get(serve.addr, "/metrics")?;
        let took = started.elapsed();
        if status != 200 {
            return Err(BenchError::Run(format!("/metrics answered {status}")));
        }
        seen = count(&text, CYCLES_SERIES);
        if seen >= 1.0 {
            scrapes.push(took);
            let series = text.lines().filter(|line| line.starts_with(DESIRED_SERIES)).count();
            partial += usize::from(series != info.presets);
            if first_cycle_rss.is_none() {
                first_cycle_rss = Some(serve.rss()?.0);
            }
        }
        bytes = text.len();
        body = text;
        http::pause(Duration::from_secs(1));
    }
    let (end_rss, peak_rss) = serve.rss()?;
    let floor = http::static_floor(&body, iterations)?;
    let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
    Ok(vec![
        Row::new("/metrics render", scrapes, Some(floor))
            .with("bytes", json!(bytes))
            .with("partial_scrapes", json!(partial))
            .with("floor", json!("the same body from a static server")),
        Row::new("serve RSS", Vec::new(), None)
            .with("cycles", json!(seen))
            .with("start_mib", json!(mib(start_rss)))
            .with("after_first_cycle_mib", json!(first_cycle_rss.map(mib)))
            .with("peak_mib", json!(mib(peak_rss)))
            .with("end_mib", json!(mib(end_rss))),
    ])
}

/// `claims` claims from `clients` keep-alive connections, spread over every preset.
fn claims(
    serve: &Serve,
    info: &SeedInfo,
    token: &str,
    clients: usize,
    claims: usize,
) -> Result<Row, BenchError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    // Names unique to this run, so a second run on the same directory claims again.
    let run_id = std::process::id();
    let started = Instant::now();
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (next, addr, token) = (Arc::clone(&next), serve.addr, token.to_owned());
        let names = info.presets_by_name.clone();
        threads.push(std::thread::spawn(move || {
            let mut results = Vec::new();
            let mut connection = http::Connection::open(addr)?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= claims {
                    return Ok::<_, BenchError>(results);
                }
                let name = &names[n % names.len()];
                let (template, preset) = name.split_once('/').unwrap_or((name, ""));
                let body = json!({ "template": template, "preset": preset, "name": format!("bench-claim-{run_id}-{n}") });
                let begun = Instant::now();
                let (status, answer) =
                    connection.request("POST", "/api/v1/workspaces", &token, &body.to_string())?;
                let took = begun.elapsed();
                let answer: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
                let id = answer["workspace"]["id"].as_str().unwrap_or("").to_owned();
                results.push((took, status, answer["claimed"] == json!(true), id));
            }
        }));
    }
    let mut results = Vec::new();
    for thread in threads {
        let part = thread.join().map_err(|_| BenchError::Run("a claim client panicked".into()))?;
        results.extend(part?);
    }
    let elapsed = started.elapsed();
    let errors = results.iter().filter(|(_, status, ..)| *status != 201).count();
    let hits: Vec<&String> = results.iter().filter(|r| r.2).map(|r| &r.3).collect();
    let unique: std::collections::HashSet<&&String> = hits.iter().collect();
    let mut latencies: Vec<Duration> = results.iter().map(|r| r.0).collect();
    latencies.sort();
    Ok(Row::new("claims", latencies.clone(), None)
        .with("clients", json!(clients))
        .with("rate_per_s", json!((results.len() as f64 / elapsed.as_secs_f64()).round()))
        .with("p50_ms", json!(ms(percentile(&latencies, 0.5))))
        .with("p99_ms", json!(ms(percentile(&latencies, 0.99))))
        .with("hits", json!(hits.len()))
        .with("misses", json!(results.len() - hits.len() - errors))
        .with("errors", json!(errors))
        .with("double_claims", json!(hits.len() - unique.len())))
}

/// The figures as one table.
pub fn table(report: &Value) -> String {
    let mut out = format!(
        "{} presets, {} workspaces, {} builds per workspace\n{:<26} {:>10} {:>10} {:>10} {:>10}  notes\n",
        report["size"]["presets"],
        report["size"]["workspaces"],
        report["size"]["builds_per_workspace"],
        "path",
        "median ms",
        "min ms",
        "max ms",
        "floor ms"
    );
    let cell = |value: &Value| value.as_f64().map_or("-".to_owned(), |v| format!("{v:.1}"));
    for row in report["rows"].as_array().into_iter().flatten() {
        let notes: Vec<String> = row
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| {
                !matches!(key.as_str(), "path" | "median_ms" | "min_ms" | "max_ms" | "floor_ms")
            })
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        out.push_str(&format!(
            "{:<26} {:>10} {:>10} {:>10} {:>10}  {}\n",
            row["path"].as_str().unwrap_or(""),
            cell(&row["median_ms"]),
            cell(&row["min_ms"]),
            cell(&row["max_ms"]),
            cell(&row["floor_ms"]),
            notes.join(" ")
        ));
    }
    out
}
