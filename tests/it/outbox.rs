//! The outbox guarantees: events are published only after commit, never for a rolled-back
//! transaction, and events committed before a crash are published after restart.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::broadcast;

use workspaced::clock::{Clock, ManualClock};
use workspaced::domain::event::{Event, PublishedEvent};
use workspaced::events::Publisher;
use workspaced::metrics::Metrics;
use workspaced::store::{Store, StoreError, StoreOptions, outbox};

use crate::helpers::start_time;

fn deleted(n: u32) -> Event {
    Event::WorkspaceDeleted {
        workspace_id: format!("ws-{n}"),
        organization_id: "org".to_owned(),
        owner_id: "user".to_owned(),
    }
}

struct Harness {
    store: Store,
    publisher: Publisher,
    received: broadcast::Receiver<Arc<PublishedEvent>>,
    clock: Arc<ManualClock>,
}

fn harness(store: Store) -> Harness {
    let clock = Arc::new(ManualClock::new(start_time()));
    let (sender, received) = broadcast::channel(64);
    let metrics = Metrics::new().unwrap();
    let publisher = Publisher::new(store.clone(), clock.clone(), sender, metrics.outbox, 2);
    Harness { store, publisher, received, clock }
}

fn drain_received(receiver: &mut broadcast::Receiver<Arc<PublishedEvent>>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(published) = receiver.try_recv() {
        events.push(published.event.clone());
    }
    events
}

fn open(path: &std::path::Path) -> Store {
    Store::open(StoreOptions::at(path)).unwrap().0
}

#[tokio::test]
async fn committed_events_are_published_in_order_and_marked_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(open(&dir.path().join("w.db")));
    let now = h.clock.now();
    h.store
        .write(move |tx| {
            for n in 0..5 {
                tx.emit(&deleted(n), now)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    // Batches of two: the drain loops until the outbox is empty.
    assert_eq!(h.publisher.drain().await.unwrap(), 5);
    assert_eq!(drain_received(&mut h.received), (0..5).map(deleted).collect::<Vec<_>>());
    assert_eq!(h.store.read(outbox::pending_count).await.unwrap(), 0);
    // Delivered events are not published again.
    assert_eq!(h.publisher.drain().await.unwrap(), 0);
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(open(&dir.path().join("w.db")));
    let now = h.clock.now();
    let result = h
        .store
        .write(move |tx| {
            tx.emit(&deleted(1), now)?;
            tx.execute(
                "INSERT INTO organizations (id, name, created_at) VALUES ('o', 'default', 0)",
                [],
            )?; // the name is taken: this fails and the whole transaction rolls back
            Ok::<_, StoreError>(())
        })
        .await;
    assert!(result.is_err());
    assert_eq!(h.publisher.drain().await.unwrap(), 0);
    assert!(drain_received(&mut h.received).is_empty());
    let rows: i64 = h
        .store
        .read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))?))
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_invisible_to_the_publisher_until_its_transaction_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(open(&dir.path().join("w.db")));
    let now = h.clock.now();
    let (emitted_tx, emitted_rx) = mpsc::channel::<()>();
    let (commit_tx, commit_rx) = mpsc::channel::<()>();
    let writer_store = h.store.clone();
    let writer = std::thread::spawn(move || {
        writer_store.write_blocking(|tx| {
            tx.emit(&deleted(7), now)?;
            emitted_tx.send(()).unwrap();
            // Hold the transaction open until the test has tried to publish.
            commit_rx.recv().unwrap();
            Ok::<_, StoreError>(())
        })
    });
    tokio::task::spawn_blocking(move || emitted_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap();
    // The row is written but not committed: nothing to publish. (The publisher's own
    // "mark delivered" write is not reached, so the open transaction does not block it.)
    let batch = h.store.read(|conn| outbox::undelivered(conn, 0, 10)).await.unwrap();
    assert!(batch.is_empty());
    commit_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap().unwrap();
    assert_eq!(h.publisher.drain().await.unwrap(), 1);
    assert_eq!(drain_received(&mut h.received), vec![deleted(7)]);
}

#[tokio::test]
async fn events_committed_before_a_crash_are_published_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let crashed = dir.path().join("crashed");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&crashed).unwrap();
    let store = open(&live.join("w.db"));
    let now = start_time();
    store
        .write(move |tx| {
            tx.emit(&deleted(1), now)?;
            tx.emit(&deleted(2), now)
        })
        .await
        .unwrap();
    // The process "dies" now: copy the files exactly as they are on disk while the store is
    // still open (the WAL is not checkpointed, nothing was published), and never close it
    // cleanly. The copy is what a restart after `kill -9` finds.
    for name in ["w.db", "w.db-wal"] {
        std::fs::copy(live.join(name), crashed.join(name)).unwrap();
    }
    std::mem::forget(store);

    let mut h = harness(open(&crashed.join("w.db")));
    assert_eq!(h.store.read(outbox::pending_count).await.unwrap(), 2);
    assert_eq!(h.publisher.drain().await.unwrap(), 2);
    assert_eq!(drain_received(&mut h.received), vec![deleted(1), deleted(2)]);
}
