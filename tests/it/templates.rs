//! Templates and presets from the config file, applied on start and on every SIGHUP, with
//! a real daemon process: each edit becomes the right database change, a bad edit changes
//! nothing, and the daemon never exits.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::helpers::{DaemonProcess, binary_config, http_get, metric_value, write_config};

/// The template section, with the knobs the steps turn.
struct Fleet<'a> {
    extra_preset: bool,
    small_preset: bool,
    small_cpu: &'a str,
    instances: u32,
    cpu_default: &'a str,
    default_ttl: &'a str,
    timezone: &'a str,
}

impl Fleet<'_> {
    fn toml(&self) -> String {
        let mut text = format!(
            r#"
[[templates]]
name = "go-dev"
organization = "acme"
default_ttl = "{ttl}"
failure_ttl = "1h"
  [[templates.parameters]]
  name = "cpu"
  type = "number"
  default = "{cpu}"
"#,
            ttl = self.default_ttl,
            cpu = self.cpu_default,
        );
        if self.small_preset {
            text.push_str(&format!(
                r#"
  [[templates.presets]]
  name = "small"
  parameters = {{ cpu = "{small_cpu}" }}
    [templates.presets.prebuilds]
    instances = {instances}
    expiration = "24h"
    timezone = "{zone}"
      [[templates.presets.prebuilds.schedule]]
      cron = "* 8-18 * * 1-5"
      instances = 3
"#,
                small_cpu = self.small_cpu,
                instances = self.instances,
                zone = self.timezone,
            ));
        }
        if self.extra_preset {
            text.push_str(
                "  [[templates.presets]]\n  name = \"large\"\n  parameters = { cpu = \"8\" }\n",
            );
        }
        text
    }
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("data/workspaced.db")).unwrap()
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |row| row.get(0)).unwrap()
}

/// (live templates, versions of go-dev, presets on its active version)
fn shape(dir: &Path) -> (i64, i64, i64) {
    let conn = db(dir);
    (
        count(&conn, "SELECT COUNT(*) FROM templates WHERE deleted = 0"),
        count(&conn, "SELECT COUNT(*) FROM template_versions v JOIN templates t ON t.id = v.template_id WHERE t.name = 'go-dev'"),
        count(
            &conn,
            "SELECT COUNT(*) FROM presets p JOIN templates t ON t.active_version_id = p.template_version_id
              WHERE t.name = 'go-dev' AND t.deleted = 0",
        ),
    )
}

fn reload(
    daemon: &DaemonProcess,
    config: &Path,
    body: &str,
    expect_success: bool,
) -> serde_json::Value {
    std::fs::write(config, body).unwrap();
    daemon.signal(Signal::SIGHUP);
    let message = if expect_success {
        "config reloaded"
    } else {
        "config reload failed; keeping the previous config"
    };
    let line = daemon.wait_for_log(message, Duration::from_secs(15));
    assert!(daemon.is_running());
    line
}

fn scrape(daemon: &DaemonProcess) -> String {
    let (status, body) = http_get(daemon.addr, "/metrics");
    assert_eq!(status, 200);
    body
}

#[test]
fn each_edit_of_the_file_becomes_the_right_database_change_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let base = binary_config(dir.path()).replace("interval = \"1s\"", "interval = \"1h\"");
    let mut fleet = Fleet {
        extra_preset: false,
        small_preset: true,
        small_cpu: "2",
        instances: 1,
        cpu_default: "2",
        default_ttl: "8h",
        timezone: "Europe/Berlin",
    };
    let config = write_config(dir.path(), &format!("{base}{}", fleet.toml()));
    let daemon = DaemonProcess::start(&config);
    daemon.wait_for_log("workspaced is ready", Duration::from_secs(15));

    // Start: one template (in a new organization), one version, one preset.
    assert_eq!(shape(dir.path()), (1, 1, 1));
    let conn = db(dir.path());
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM organizations WHERE name = 'acme'"), 1);
    assert_eq!(
        count(
            &conn,
            "SELECT desired_instances FROM presets p JOIN templates t ON t.active_version_id = p.template_version_id"
        ),
        1
    );
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM preset_prebuild_schedules"), 1);
    let body = scrape(&daemon);
    assert_eq!(metric_value(&body, "workspaced_config_templates"), Some(1.0));
    assert!(
        metric_value(&body, "workspaced_config_last_reload_success_timestamp_seconds").unwrap()
            > 0.0
    );

    // The cycle at start queued the pool's prebuild: it must survive every pool edit.
    let prebuild: String = db(dir.path())
        .query_row(
            "SELECT w.id FROM workspaces w JOIN users u ON u.id = w.owner_id WHERE u.username = 'prebuilds'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let on_active_version = |dir: &Path| {
        count(
            &db(dir),
            &format!(
                "SELECT COUNT(*) FROM workspace_builds b JOIN workspaces w ON w.id = b.workspace_id
                   JOIN templates t ON t.id = w.template_id
                  WHERE b.workspace_id = '{prebuild}' AND b.template_version_id = t.active_version_id
                    AND w.deleted = 0"
            ),
        )
    };
    assert_eq!(on_active_version(dir.path()), 1);

    // Add a preset: the same version gets it; nothing else changes.
    fleet.extra_preset = true;
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 1, 2));
    assert_eq!(on_active_version(dir.path()), 1, "adding a preset keeps the other pools");

    // Change the instances: in place, the ready prebuild stays current.
    fleet.instances = 2;
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 1, 2));
    assert_eq!(
        count(
            &db(dir.path()),
            "SELECT desired_instances FROM presets p JOIN templates t ON t.active_version_id = p.template_version_id
              WHERE p.name = 'small'"
        ),
        2
    );
    assert_eq!(on_active_version(dir.path()), 1, "a pool edit is not new content");
    assert_eq!(
        count(
            &db(dir.path()),
            "SELECT COUNT(*) FROM audit_log WHERE action IN ('preset.created', 'preset.updated')"
        ),
        2
    );

    // Schedules and time zone are pool settings too.
    fleet.timezone = "America/New_York";
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 1, 2));
    assert_eq!(
        count(
            &db(dir.path()),
            "SELECT COUNT(*) FROM presets WHERE scheduling_timezone = 'America/New_York'"
        ),
        1
    );

    // Remove the preset with the pool: its pool goes to 0, the version stays.
    fleet.small_preset = false;
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 1, 2));
    assert_eq!(
        count(&db(dir.path()), "SELECT desired_instances FROM presets WHERE name = 'small'"),
        0
    );
    fleet.small_preset = true;
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 1, 2));

    // A preset's parameters are content: new version.
    fleet.small_cpu = "4";
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 2, 2));
    assert_eq!(on_active_version(dir.path()), 0, "the old prebuild is outdated now");

    // Change a parameter default: new version.
    fleet.cpu_default = "4";
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 3, 2));

    // Change a schedule option only: updated in place, no new version.
    fleet.default_ttl = "12h";
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 3, 2));
    assert_eq!(
        count(&db(dir.path()), "SELECT default_ttl_s FROM templates WHERE name = 'go-dev'"),
        12 * 3600
    );

    // The same file again writes nothing.
    let audit_before = count(&db(dir.path()), "SELECT COUNT(*) FROM audit_log");
    reload(&daemon, &config, &format!("{base}{}", fleet.toml()), true);
    assert_eq!(shape(dir.path()), (1, 3, 2));
    assert_eq!(count(&db(dir.path()), "SELECT COUNT(*) FROM audit_log"), audit_before);

    // A syntax error: nothing changes, the failure is counted, the daemon keeps serving.
    let line = reload(&daemon, &config, &format!("{base}[[templates]\nname = \"x\"\n"), false);
    assert!(line["fields"]["error"].as_str().unwrap().contains("line"), "{line}");
    assert_eq!(shape(dir.path()), (1, 3, 2));
    assert_eq!(
        metric_value(&scrape(&daemon), "workspaced_config_reload_failures_total"),
        Some(1.0)
    );

    // An unknown zone: rejected with the key path, nothing changes.
    fleet.timezone = "Europe/Atlantis";
    let line = reload(&daemon, &config, &format!("{base}{}", fleet.toml()), false);
    let error = line["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains("templates[0].presets[0].prebuilds.timezone") && error.contains("Atlantis"),
        "{error}"
    );
    assert_eq!(shape(dir.path()), (1, 3, 2));
    assert_eq!(
        metric_value(&scrape(&daemon), "workspaced_config_reload_failures_total"),
        Some(2.0)
    );

    // Remove the template: soft-deleted, history kept.
    reload(&daemon, &config, &base, true);
    assert_eq!(shape(dir.path()), (0, 3, 0));
    assert_eq!(count(&db(dir.path()), "SELECT COUNT(*) FROM templates WHERE deleted = 1"), 1);
    assert_eq!(metric_value(&scrape(&daemon), "workspaced_config_templates"), Some(0.0));

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_reload_changes_the_log_level_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let base = binary_config(dir.path()).replace("interval = \"1s\"", "interval = \"1h\"");
    let config = write_config(dir.path(), &base);
    let daemon = DaemonProcess::start(&config);
    daemon.wait_for_log("workspaced is ready", Duration::from_secs(15));
    let debug = base.replace("format = \"json\"", "format = \"json\"\nlevel = \"debug\"");
    reload(&daemon, &config, &debug, true);
    // At debug level the loop iterations are logged; wait for one (interval 1h, so trigger
    // it by lowering the interval in the same reload).
    let fast = debug.replace("[gc]\ninterval = \"1h\"", "[gc]\ninterval = \"1s\"");
    reload(&daemon, &config, &fast, true);
    daemon.wait_for_log("loop iteration done", Duration::from_secs(15));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_version_hashed_by_an_older_daemon_is_recognised_and_gets_no_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet {
        extra_preset: true,
        small_preset: true,
        small_cpu: "2",
        instances: 1,
        cpu_default: "2",
        default_ttl: "8h",
        timezone: "Europe/Berlin",
    };
    let config =
        write_config(dir.path(), &format!("{}{}", binary_config(dir.path()), fleet.toml()));
    let config =
        workspaced::config::load(&workspaced::config::ConfigSource { file: Some(config) }).unwrap();
    let (store, _) = workspaced::store::Store::open(workspaced::store::StoreOptions::at(
        dir.path().join("w.db"),
    ))
    .unwrap();
    let desired = workspaced::templates::desired(&config);
    let now = crate::helpers::start_time();
    let first = desired.clone();
    store.write_blocking(move |tx| workspaced::templates::apply(tx, &first, now)).unwrap();
    // What a daemon from before in-place pool edits wrote: the hash over the presets too.
    let legacy = desired[0].legacy_hash.clone();
    assert_ne!(legacy, desired[0].version.content_hash);
    store
        .write_blocking(move |tx| {
            tx.execute("UPDATE template_versions SET content_hash = ?1", [&legacy])?;
            Ok::<_, workspaced::store::StoreError>(())
        })
        .unwrap();
    let again = desired.clone();
    let report =
        store.write_blocking(move |tx| workspaced::templates::apply(tx, &again, now)).unwrap();
    assert!(report.versions_created.is_empty(), "{report:?}");
    let hash: String = store
        .read_blocking(|conn| {
            Ok(conn.query_row("SELECT content_hash FROM template_versions", [], |row| row.get(0))?)
        })
        .unwrap();
    assert_eq!(hash, desired[0].version.content_hash, "rewritten to the current scheme");
}
