use super::*;

use chrono::DateTime;

use tokio::sync::watch;

use crate::clock::ManualClock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::StoreOptions;
use crate::store::{Store, StoreError};

struct Fixture {
    _dir: tempfile::TempDir,
    ctx: LoopCtx,
    config: watch::Sender<Arc<Config>>,
}

fn fixture(config: Config) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::at(dir.path().join("w.db"))).unwrap();
    let clock = Arc::new(ManualClock::new(
        DateTime::parse_from_rfc3339("2025-06-02T12:00:00Z").unwrap().to_utc(),
    ));
    let (sender, receiver) = watch::channel(Arc::new(config));
    let ctx = LoopCtx {
        store,
        clock,
        metrics: Metrics::new().unwrap(),
        config: receiver,
        activity: Arc::new(crate::activity::Tracker::new()),
    };
    Fixture { _dir: dir, ctx, config: sender }
}

fn runs(ctx: &LoopCtx, kind: LoopKind) -> u64 {
    ctx.metrics.loops.runs.with_label_values(&[kind.name()]).get()
}

fn errors(ctx: &LoopCtx, kind: LoopKind) -> u64 {
    ctx.metrics.loops.errors.with_label_values(&[kind.name()]).get()
}

#[tokio::test(start_paused = true)]
async fn a_loop_first_runs_one_interval_after_start_then_every_interval() {
    let fixture = fixture(Config::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_every(LoopKind::Reconciler, fixture.ctx.clone(), cancel.clone()));
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(runs(&fixture.ctx, LoopKind::Reconciler), 0);
    tokio::time::sleep(Duration::from_secs(125)).await;
    assert_eq!(runs(&fixture.ctx, LoopKind::Reconciler), 3);
    cancel.cancel();
    task.await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(runs(&fixture.ctx, LoopKind::Reconciler), 3, "no iteration after cancellation");
}

#[tokio::test(start_paused = true)]
async fn a_reloaded_interval_takes_effect_without_a_restart() {
    let fixture = fixture(Config::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_every(LoopKind::Lifecycle, fixture.ctx.clone(), cancel.clone()));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(runs(&fixture.ctx, LoopKind::Lifecycle), 1);
    let mut faster = Config::default();
    faster.lifecycle.interval = crate::config::duration::HumanDuration::from_secs(10);
    fixture.config.send(Arc::new(faster)).unwrap();
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(runs(&fixture.ctx, LoopKind::Lifecycle), 4);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failing_iteration_is_counted_and_the_loop_goes_on() {
    let fixture = fixture(Config::default());
    // Break the query the reconciler reads with.
    fixture
        .ctx
        .store
        .write(|tx| {
            tx.execute_batch("ALTER TABLE presets RENAME TO presets_moved")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_every(LoopKind::Reconciler, fixture.ctx.clone(), cancel.clone()));
    tokio::time::sleep(Duration::from_secs(121)).await;
    assert_eq!(errors(&fixture.ctx, LoopKind::Reconciler), 2);
    // Repair it: the next iteration succeeds.
    fixture
        .ctx
        .store
        .write(|tx| {
            tx.execute_batch("ALTER TABLE presets_moved RENAME TO presets")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runs(&fixture.ctx, LoopKind::Reconciler), 3);
    assert_eq!(errors(&fixture.ctx, LoopKind::Reconciler), 2);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn run_once_records_the_clock_time_of_the_iteration() {
    let fixture = fixture(Config::default());
    run_once(LoopKind::Gc, &fixture.ctx).await.unwrap();
    let last = fixture.ctx.metrics.loops.last_run.with_label_values(&["gc"]).get();
    assert_eq!(last, fixture.ctx.clock.now().timestamp());
}
