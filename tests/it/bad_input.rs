//! Every kind of bad input gives one clear line on stderr, a non-zero exit, and leaves the
//! database as it was.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::helpers::{binary_config, run_binary, write_config};

/// Runs `workspaced serve --config CONFIG` and returns its output.
fn serve(config: &Path) -> Output {
    serve_with_env(config, &[])
}

fn serve_with_env(config: &Path, env: &[(&str, &str)]) -> Output {
    run_binary(&["serve", "--config", config.to_str().unwrap()], env, Duration::from_secs(30))
}

/// Asserts a failed exit with `code` and exactly one stderr line containing every `needle`.
fn assert_one_line_error(output: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "expected one line, got: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    stderr
}

/// A config whose only fault is `fault`, appended to a valid one.
fn config_with(dir: &Path, fault: &str) -> std::path::PathBuf {
    write_config(dir, &format!("{}{fault}", binary_config(dir)))
}

fn assert_no_database(dir: &Path) {
    assert!(!dir.join("data/workspaced.db").exists(), "a database was created");
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let output = serve(&missing);
    assert_one_line_error(&output, 2, &[missing.to_str().unwrap(), "cannot read config file"]);
    assert_no_database(dir.path());
}

#[test]
fn an_unreadable_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be read as a file, even by root.
    let unreadable = dir.path().join("config.d");
    std::fs::create_dir(&unreadable).unwrap();
    let output = serve(&unreadable);
    assert_one_line_error(&output, 2, &[unreadable.to_str().unwrap(), "cannot read"]);
}

#[test]
fn a_toml_syntax_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[server]\nlisten = \"127.0.0.1:0\"\n[storage\n");
    let output = serve(&config);
    assert_one_line_error(&output, 2, &[config.to_str().unwrap(), "line 3"]);
    assert_no_database(dir.path());
}

#[test]
fn an_unknown_key_names_its_path_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "[outbox]\npoll_intervall = \"5s\"\n");
    let output = serve(&config);
    assert_one_line_error(
        &output,
        2,
        &[config.to_str().unwrap(), "outbox.poll_intervall", "unknown key"],
    );
    assert_no_database(dir.path());
}

#[test]
fn an_unknown_section_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "[reconcilers]\ninterval = \"5s\"\n");
    let output = serve(&config);
    assert_one_line_error(&output, 2, &["reconcilers", "unknown key"]);
}

#[test]
fn a_bad_duration_names_key_value_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let body = binary_config(dir.path())
        .replace("[gc]\ninterval = \"1s\"", "[gc]\ninterval = \"5 minutes\"");
    let config = write_config(dir.path(), &body);
    let output = serve(&config);
    assert_one_line_error(&output, 2, &[config.to_str().unwrap(), "gc.interval", "5 minutes"]);
    assert_no_database(dir.path());
}

#[test]
fn a_bad_value_in_the_environment_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let output = serve_with_env(&config, &[("WORKSPACED_LIFECYCLE__INTERVAL", "soon")]);
    assert_one_line_error(&output, 2, &["WORKSPACED_LIFECYCLE__INTERVAL", "soon"]);
    let output = serve_with_env(&config, &[("WORKSPACED_SERVER__LISTN", "127.0.0.1:0")]);
    assert_one_line_error(&output, 2, &["server.listn", "unknown key"]);
    assert_no_database(dir.path());
}

#[test]
fn check_config_exits_0_for_a_good_file_and_2_for_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), &binary_config(dir.path()));
    let output = run_binary(
        &["check-config", "--config", good.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "{output:?}");
    let body = binary_config(dir.path())
        .replace("[storage]\n", "[storage]\nsynchronous = \"sometimes\"\n");
    let bad = write_config(dir.path(), &body);
    let output = run_binary(
        &["check-config", "--config", bad.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert_one_line_error(&output, 2, &["sometimes"]);
    assert_no_database(dir.path());
}

#[test]
fn a_database_file_that_is_not_sqlite_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let database = dir.path().join("data/workspaced.db");
    std::fs::create_dir_all(database.parent().unwrap()).unwrap();
    let content = b"# my notes, not a database\n".repeat(64);
    std::fs::write(&database, &content).unwrap();
    let output = serve(&config);
    assert_one_line_error(&output, 1, &[database.to_str().unwrap(), "not a SQLite database"]);
    assert_eq!(std::fs::read(&database).unwrap(), content);
    assert!(!dir.path().join("data/workspaced.db-wal").exists());
}

#[test]
fn a_database_newer_than_the_binary_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let migrate = run_binary(
        &["migrate", "--config", config.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert!(migrate.status.success());
    let database = dir.path().join("data/workspaced.db");
    {
        let conn = rusqlite::Connection::open(&database).unwrap();
        conn.execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
            [],
        )
        .unwrap();
    }
    let before = std::fs::read(&database).unwrap();
    let output = serve(&config);
    assert_one_line_error(&output, 1, &[database.to_str().unwrap(), "schema version 99", "newer"]);
    assert_eq!(std::fs::read(&database).unwrap(), before);
}

#[test]
fn a_port_in_use_is_named_and_the_database_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let body = binary_config(dir.path()).replace("127.0.0.1:0", &addr);
    let config = write_config(dir.path(), &body);
    // First a database that exists, then a start that cannot bind.
    let migrate = run_binary(
        &["migrate", "--config", config.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert!(migrate.status.success());
    let database = dir.path().join("data/workspaced.db");
    let before = std::fs::read(&database).unwrap();
    let modified = std::fs::metadata(&database).unwrap().modified().unwrap();
    let output = serve(&config);
    assert_one_line_error(&output, 1, &[&addr, "server.listen", "in use"]);
    assert_eq!(std::fs::read(&database).unwrap(), before);
    assert_eq!(std::fs::metadata(&database).unwrap().modified().unwrap(), modified);
    drop(taken);
}

#[test]
fn bad_webhooks_and_api_settings_are_named_with_their_line() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[[webhooks]]\nname = \"ops\"\nurl = \"https://example.com/hook\"\nsecret = \"0123456789abcdef\"\n",
            &["webhooks[0].url", "https is not supported", "line"],
        ),
        (
            "[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"short\"\n",
            &["webhooks[0].secret", "at least 16"],
        ),
        (
            "[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"0123456789abcdef\"\nevents = [\"build.exploded\"]\n",
            &["webhooks[0].events", "build.exploded"],
        ),
        (
            "[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/a\"\nsecret = \"0123456789abcdef\"\n\
             [[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/b\"\nsecret = \"0123456789abcdef\"\n",
            &["webhooks[1].name", "duplicate"],
        ),
        ("[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/a\"\n", &["secret"]),
        ("[api]\nmax_body_bytes = 10\n", &["api.max_body_bytes", "1024"]),
    ];
    for (fault, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with(dir.path(), fault);
        let output = run_binary(
            &["check-config", "--config", config.to_str().unwrap()],
            &[],
            Duration::from_secs(30),
        );
        assert_one_line_error(&output, 2, needles);
        assert_no_database(dir.path());
    }
}
