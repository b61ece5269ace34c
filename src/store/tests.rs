use super::*;

use crate::store::CachedStatements;
use rusqlite::params;

/// SQLite's query plan for `sql` with `params`, on a freshly migrated file: one line per
/// step (`SEARCH workspaces USING INDEX ...`), for tests that pin an index.
pub(crate) fn query_plan<P: rusqlite::Params + Send + 'static>(
    sql: &str,
    params: P,
) -> Vec<String> {
    let (_dir, store) = fresh();
    let sql = format!("EXPLAIN QUERY PLAN {sql}");
    store
        .read_blocking(move |conn| {
            let mut statement = conn.prepare(&sql)?;
            let steps = statement.query_map(params, |row| row.get(3))?;
            Ok(steps.collect::<Result<_, _>>()?)
        })
        .unwrap()
}

fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) =
        Store::open(StoreOptions::at(dir.path().join("db").join("w.db"))).unwrap();
    assert!(report.created);
    (dir, store)
}

fn table_names(store: &Store) -> Vec<String> {
    store
        .read_blocking(|conn| {
            let mut statement =
                conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
            let names = statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
            Ok(names)
        })
        .unwrap()
}

#[test]
fn a_fresh_file_gets_the_whole_schema_in_wal_mode() {
    let (_dir, store) = fresh();
    let tables = table_names(&store);
    for table in [
        "organizations",
        "users",
        "user_roles",
        "api_tokens",
        "templates",
        "template_versions",
        "template_version_parameters",
        "presets",
        "preset_parameters",
        "preset_prebuild_schedules",
        "workspaces",
        "workspace_builds",
        "workspace_build_parameters",
        "provisioner_jobs",
        "provisioner_job_logs",
        "provisioner_job_timings",
        "workspace_resources",
        "resource_replacements",
        "notifications",
        "outbox",
        "audit_log",
        "refinery_schema_history",
    ] {
        assert!(tables.iter().any(|t| t == table), "missing table {table} in {tables:?}");
    }
    let mode: String = store
        .read_blocking(|conn| {
            Ok(conn.query_row_cached("PRAGMA journal_mode", [], |row| row.get(0))?)
        })
        .unwrap();
    assert_eq!(mode, "wal");
    let prebuilds_user: String = store
        .read_blocking(|conn| {
            Ok(conn.query_row_cached(
                "SELECT username FROM users WHERE is_system = 1",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(prebuilds_user, "prebuilds");
}

#[test]
fn reopening_applies_nothing_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let (store, first) = Store::open(StoreOptions::at(&path)).unwrap();
    assert_eq!(
        first.applied_migrations,
        (1..=migrations::latest_known_version()).collect::<Vec<_>>()
    );
    store
        .write_blocking(|tx| {
            tx.execute_cached(
                "INSERT INTO organizations (id, name, created_at) VALUES ('o2', 'acme', 1)",
                [],
            )
            .map_err(StoreError::from)
        })
        .unwrap();
    drop(store);
    let (store, second) = Store::open(StoreOptions::at(&path)).unwrap();
    assert!(!second.created);
    assert!(second.applied_migrations.is_empty());
    assert_eq!(second.schema_version, migrations::latest_known_version());
    let count: i64 = store
        .read_blocking(|conn| {
            Ok(conn.query_row_cached("SELECT COUNT(*) FROM organizations", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(count, 2);
}

#[test]
fn a_failed_write_rolls_back_its_rows_and_events() {
    let (_dir, store) = fresh();
    let event = Event::ConfigApplied { templates_changed: 1, versions_created: 1 };
    let result: Result<(), StoreError> = store.write_blocking(|tx| {
        tx.execute_cached(
            "INSERT INTO organizations (id, name, created_at) VALUES ('o2', 'acme', 1)",
            [],
        )?;
        tx.emit(&event, DateTime::from_timestamp(1_750_000_000, 0).unwrap())?;
        Err(StoreError::Corrupt { what: "test".into(), reason: "abort".into() })
    });
    assert!(result.is_err());
    let (orgs, events): (i64, i64) = store
        .read_blocking(|conn| {
            Ok((
                conn.query_row_cached("SELECT COUNT(*) FROM organizations", [], |r| r.get(0))?,
                conn.query_row_cached("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?,
            ))
        })
        .unwrap();
    assert_eq!((orgs, events), (1, 0));
}

#[test]
fn read_connections_cannot_write() {
    let (_dir, store) = fresh();
    let result = store.read_blocking(|conn| {
        Ok(conn.execute_cached(
            "INSERT INTO organizations (id, name, created_at) VALUES ('x', 'x', 1)",
            [],
        )?)
    });
    assert!(result.is_err());
}

#[test]
fn foreign_keys_are_enforced() {
    let (_dir, store) = fresh();
    let result = store.write_blocking(|tx| {
        tx.execute_cached(
            "INSERT INTO user_roles (user_id, organization_id, role, created_at) VALUES ('nobody', 'nowhere', 'member', 1)",
            [],
        )
        .map_err(StoreError::from)
    });
    assert!(result.is_err());
}

#[test]
fn concurrent_read_modify_write_transactions_lose_no_update() {
    let (_dir, store) = fresh();
    store
        .write_blocking(|tx| {
            tx.execute_cached(
                "INSERT INTO organizations (id, name, created_at) VALUES ('c', 'counter', 0)",
                [],
            )
            .map_err(StoreError::from)
        })
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    store
                        .write_blocking(|tx| {
                            // Read, then write what was read plus one: only serialized
                            // transactions make this exact.
                            let value: i64 = tx.query_row_cached(
                                "SELECT created_at FROM organizations WHERE id = 'c'",
                                [],
                                |r| r.get(0),
                            )?;
                            tx.execute_cached(
                                "UPDATE organizations SET created_at = ?1 WHERE id = 'c'",
                                params![value + 1],
                            )?;
                            Ok::<_, StoreError>(())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let value: i64 = store
        .read_blocking(|conn| {
            Ok(conn.query_row_cached(
                "SELECT created_at FROM organizations WHERE id = 'c'",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(value, 200);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let content = b"this is a text file, not a database\n".repeat(100);
    std::fs::write(&path, &content).unwrap();
    let error = Store::open(StoreOptions::at(&path)).err().unwrap();
    assert!(matches!(error, StoreError::NotSqlite { .. }), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), content);
}

#[test]
fn a_database_from_a_newer_binary_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    drop(Store::open(StoreOptions::at(&path)).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_cached(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (999, 'future', '2030-01-01T00:00:00Z', '1')",
            [],
        )
        .unwrap();
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let error = Store::open(StoreOptions::at(&path)).err().unwrap();
    match error {
        StoreError::TooNew { database_version, binary_version, .. } => {
            assert_eq!(database_version, 999);
            assert_eq!(binary_version, migrations::latest_known_version());
        }
        other => panic!("expected TooNew, got {other}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn cached_statements_are_not_re_prepared_on_every_execution_after_a_schema_change() {
    // Regression: without the query planner stability guarantee (see `stable_plans`), one
    // schema change made this statement re-prepare on every later execution.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::at(dir.path().join("db"))).unwrap();
    let sql =
        "SELECT b.id, j.status FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
                WHERE b.workspace_id = ?1 ORDER BY b.build_number DESC LIMIT 1";
    let run = |i: i32| {
        store
            .write_blocking(|tx| {
                let mut statement = tx.prepare_cached(sql)?;
                {
                    let mut rows = statement.query([format!("w{i}")])?;
                    while rows.next()?.is_some() {}
                }
                Ok::<_, StoreError>(statement.get_status(rusqlite::StatementStatus::RePrepare))
            })
            .unwrap()
    };
    assert_eq!(run(0), 0);
    store
        .write_blocking(|tx| {
            tx.execute_batch("CREATE TABLE probe (a); DROP TABLE probe").map_err(StoreError::from)
        })
        .unwrap();
    let after: Vec<i32> = (1..5).map(run).collect();
    assert_eq!(after, [1, 1, 1, 1], "re-prepared once for the schema change, then never again");
}

fn with_readers(readers: usize, busy_ms: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::at(dir.path().join("w.db"));
    options.read_connections = readers;
    options.busy_timeout = Duration::from_millis(busy_ms);
    let (store, _) = Store::open(options).unwrap();
    (dir, store)
}

#[test]
fn a_panicking_read_gives_its_connection_back() {
    let (_dir, store) = with_readers(2, 2_000);
    for _ in 0..3 {
        let store = store.clone();
        let joined = std::thread::spawn(move || {
            store.read_blocking(|_conn| -> Result<(), StoreError> { panic!("reader bug") })
        })
        .join();
        assert!(joined.is_err(), "the closure panicked");
    }
    // Both slots are free again: two readers at once, each answering at once.
    let started = std::time::Instant::now();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                store.read_blocking(|conn| {
                    barrier.wait();
                    Ok(conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?)
                })
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap().unwrap(), 1);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "no reader waited for a leaked slot");
}

#[test]
fn a_read_that_finds_no_free_connection_gives_up_with_a_transient_error() {
    let (_dir, store) = with_readers(1, 200);
    let (hold, release) = std::sync::mpsc::channel::<()>();
    let (held, is_held) = std::sync::mpsc::channel::<()>();
    let holder = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.read_blocking(|_conn| {
                held.send(()).unwrap();
                release.recv().ok();
                Ok(())
            })
        })
    };
    is_held.recv().unwrap();
    let error = store.read_blocking(|_conn| Ok(())).unwrap_err();
    assert!(matches!(error, StoreError::Exhausted { .. }), "{error}");
    assert!(error.is_transient());
    hold.send(()).unwrap();
    holder.join().unwrap().unwrap();
    store.read_blocking(|_conn| Ok(())).unwrap();
}

#[test]
fn a_database_at_v4_keeps_every_job_and_reference_through_the_v5_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        migrations::migrations::runner()
            .set_grouped(true)
            .set_target(refinery::Target::Version(4))
            .run(&mut conn)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, username, created_at, updated_at) VALUES ('u', 'alice', 0, 0);
             INSERT INTO templates (id, organization_id, name, created_at, updated_at)
                  VALUES ('t', '00000000-0000-0000-0000-000000000001', 't', 0, 0);
             INSERT INTO template_versions (id, template_id, name, provisioner, content_hash, created_at)
                  VALUES ('v', 't', 'v1', 'local', 'h', 0);
             INSERT INTO workspaces (id, organization_id, owner_id, template_id, name, created_at, updated_at, last_used_at)
                  VALUES ('w', '00000000-0000-0000-0000-000000000001', 'u', 't', 'dev', 0, 0, 0);
             INSERT INTO provisioner_jobs (id, status, backend, created_at, updated_at, error)
                  VALUES ('j', 'failed', 'local', 5, 6, 'boom');
             INSERT INTO workspace_builds (id, workspace_id, build_number, template_version_id,
                  transition, reason, initiator_id, job_id, created_at, updated_at)
                  VALUES ('b', 'w', 1, 'v', 'start', 'initiator', 'u', 'j', 5, 5);
             INSERT INTO provisioner_job_logs (job_id, created_at, level, stage, output)
                  VALUES ('j', 5, 'info', 'init', 'hello');",
        )
        .unwrap();
    }
    let (store, report) = Store::open(StoreOptions::at(&path)).unwrap();
    let latest = crate::store::migrations::latest_known_version();
    assert_eq!(report.applied_migrations, (5..=latest).collect::<Vec<_>>());
    store
        .write_blocking(|tx| {
            let (status, error): (String, String) = tx.query_row(
                "SELECT status, error FROM provisioner_jobs WHERE id = 'j'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            assert_eq!((status.as_str(), error.as_str()), ("failed", "boom"));
            tx.execute("UPDATE provisioner_jobs SET status = 'interrupted' WHERE id = 'j'", [])?;
            // The references from builds and logs still point at the rebuilt table.
            let dangling: i64 =
                tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| {
                    row.get(0)
                })?;
            assert_eq!(dangling, 0);
            let orphan = tx.execute(
                "INSERT INTO provisioner_job_logs (job_id, created_at, level, stage, output)
                 VALUES ('no-such-job', 0, 'info', 's', 'x')",
                [],
            );
            assert!(orphan.is_err(), "foreign keys are on again after the migration");
            Ok::<_, StoreError>(())
        })
        .unwrap();
}

#[test]
fn a_damaged_database_is_refused_at_open_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    {
        let (store, _) = Store::open(StoreOptions::at(&path)).unwrap();
        store
            .write_blocking(|tx| {
                for i in 0..2000 {
                    tx.execute(
                        "INSERT INTO audit_log (time, actor, action, resource_type, resource_id)
                         VALUES (0, 'a', 'x', 'y', ?1)",
                        [format!("r{i}-{}", "z".repeat(200))],
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        store
            .write_blocking(|tx| {
                tx.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                Ok::<_, StoreError>(())
            })
            .ok();
    }
    // Scribble over one page in the middle of the file (not the header): SQLite opens it
    // happily, and only an integrity check notices.
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    let target = (bytes.len() / page / 2) * page;
    for byte in &mut bytes[target + 8..target + 400] {
        *byte = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let _ = std::fs::remove_file(dir.path().join("w.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("w.db-shm"));
    let error = match Store::open(StoreOptions::at(&path)) {
        Ok(_) => panic!("a damaged database was accepted"),
        Err(error) => error,
    };
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("integrity check"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was not touched");
}

#[test]
fn a_corrupt_notification_is_set_aside_and_the_others_are_sent() {
    let (_dir, store) = fresh();
    let now = chrono::DateTime::from_timestamp(1_748_865_600, 0).unwrap();
    store
        .write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO notifications (kind, payload, created_at) VALUES ('x', 'not json', 0);
                 INSERT INTO notifications (kind, payload, created_at) VALUES ('y', '{}', 0);",
            )?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let sent = store.write_blocking(|tx| notifications::dispatch(tx, 10, now)).unwrap();
    assert_eq!(sent, 2);
    let statuses: Vec<String> = store
        .read_blocking(|conn| {
            let mut statement = conn.prepare("SELECT status FROM notifications ORDER BY id")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .unwrap();
    assert_eq!(statuses, ["failed", "sent"]);
}
