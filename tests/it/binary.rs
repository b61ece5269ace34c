//! The real binary: start, serve, scrape, reload, stop.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::helpers::{
    DaemonProcess, binary_config, eventually, http_get, metric_value, run_binary, write_config,
};

#[test]
fn the_daemon_serves_health_and_metrics_runs_its_loops_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let daemon = DaemonProcess::start(&config);

    assert_eq!(http_get(daemon.addr, "/healthz"), (200, "ok\n".to_owned()));
    eventually(Duration::from_secs(10), "/readyz 200", || {
        (http_get(daemon.addr, "/readyz").0 == 200).then_some(())
    });
    // Every loop runs on its own 1 s timer and reports runs and durations.
    let scrape = eventually(Duration::from_secs(20), "every loop to run twice", || {
        let (status, body) = http_get(daemon.addr, "/metrics");
        assert_eq!(status, 200);
        ["reconciler", "lifecycle", "gc"]
            .iter()
            .all(|name| {
                metric_value(&body, &format!("workspaced_loop_runs_total{{loop=\"{name}\"}}"))
                    .is_some_and(|runs| runs >= 2.0)
            })
            .then_some(body)
    });
    for name in ["reconciler", "lifecycle", "gc"] {
        let count = metric_value(
            &scrape,
            &format!("workspaced_loop_duration_seconds_count{{loop=\"{name}\"}}"),
        );
        assert!(count.is_some_and(|count| count >= 2.0), "{name}: {scrape}");
        assert_eq!(
            metric_value(&scrape, &format!("workspaced_loop_errors_total{{loop=\"{name}\"}}")),
            Some(0.0)
        );
    }
    assert_eq!(metric_value(&scrape, "workspaced_build_info{version=\"0.1.0\"}"), Some(1.0));
    assert_eq!(http_get(daemon.addr, "/nope").0, 404);

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");

    // The file holds the migrated schema.
    let conn = rusqlite::Connection::open(dir.path().join("data/workspaced.db")).unwrap();
    let version: i64 = conn
        .query_row("SELECT MAX(version) FROM refinery_schema_history", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, workspaced::store::migrations::latest_known_version());
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN
             ('workspaces', 'workspace_builds', 'provisioner_jobs', 'outbox', 'audit_log', 'presets')",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(tables, 6);
}

#[test]
fn sigint_also_stops_the_daemon_with_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let daemon = DaemonProcess::start(&config);
    daemon.signal(Signal::SIGINT);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn sighup_with_a_broken_config_keeps_the_daemon_running_on_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let daemon = DaemonProcess::start(&config);
    std::fs::write(&config, "[server\nlisten = ").unwrap();
    daemon.signal(Signal::SIGHUP);
    let line = daemon
        .wait_for_log("config reload failed; keeping the previous config", Duration::from_secs(10));
    assert!(line["fields"]["error"].as_str().unwrap().contains("workspaced.toml"), "{line}");
    assert!(daemon.is_running());
    assert_eq!(http_get(daemon.addr, "/healthz").0, 200);

    // A good config is applied.
    std::fs::write(&config, binary_config(dir.path())).unwrap();
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("config reloaded", Duration::from_secs(10));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn an_environment_variable_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The file names a port that is taken; the environment moves the daemon to a free one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let body = binary_config(dir.path()).replace("127.0.0.1:0", &taken_addr.to_string());
    let config = write_config(dir.path(), &body);
    let daemon =
        DaemonProcess::start_with_env(&config, &[("WORKSPACED_SERVER__LISTEN", "127.0.0.1:0")]);
    assert_ne!(daemon.addr, taken_addr);
    assert_eq!(http_get(daemon.addr, "/healthz").0, 200);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn migrate_creates_the_schema_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let config = config.to_str().unwrap();
    let first = run_binary(&["migrate", "--config", config], &[], Duration::from_secs(30));
    assert!(first.status.success(), "{first:?}");
    let all: Vec<i64> = (1..=workspaced::store::migrations::latest_known_version()).collect();
    assert!(
        String::from_utf8_lossy(&first.stdout).contains(&format!("applied {all:?}")),
        "{first:?}"
    );
    let second = run_binary(&["migrate", "--config", config], &[], Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&second.stdout).contains("nothing to apply"), "{second:?}");
}

#[test]
fn version_prints_the_crate_version() {
    let output = run_binary(&["version"], &[], Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "workspaced 0.1.0");
}

#[test]
fn the_optional_log_file_receives_the_daemon_log_and_keeps_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // Five files from earlier hours, oldest first (retention goes by creation order), and
    // one file that is not ours.
    let old: Vec<String> =
        (1..=5).map(|hour| format!("workspaced.2020-01-01-0{hour}.log")).collect();
    let (_never, pause) = std::sync::mpsc::channel::<()>();
    for name in &old {
        std::fs::write(logs.join(name), "old\n").unwrap();
        // File times are coarse (a few ms): keep the creation order visible.
        let _ = pause.recv_timeout(Duration::from_millis(20));
    }
    std::fs::write(logs.join("other.txt"), "keep me\n").unwrap();
    let body = format!(
        "{}[log.file]\ndirectory = {logs:?}\nrotation = \"hourly\"\nmax_files = 3\n",
        binary_config(dir.path())
    );
    let config = write_config(dir.path(), &body);
    let daemon = DaemonProcess::start(&config);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // max_files = 3: the two newest old files and the current one; others untouched.
    let current: Vec<&String> =
        names.iter().filter(|n| !old.contains(n) && n.as_str() != "other.txt").collect();
    assert_eq!(current.len(), 1, "{names:?}");
    let current = current[0].clone();
    // Hourly rotation names the file by the hour: workspaced.YYYY-MM-DD-HH.log.
    let stamp = current.trim_start_matches("workspaced.").trim_end_matches(".log");
    assert_eq!(stamp.len(), "2020-01-01-05".len(), "{current}");
    let mut expected =
        vec![old[3].clone(), old[4].clone(), current.clone(), "other.txt".to_owned()];
    expected.sort();
    assert_eq!(names, expected);
    let text = std::fs::read_to_string(logs.join(&current)).unwrap();
    // The file writer is flushed on exit: the last line is there too.
    assert!(text.contains("http server listening"), "{text}");
    assert!(text.contains("\"stopped\""), "{text}");
}

#[test]
fn a_job_orphaned_by_kill_9_is_interrupted_on_restart_its_provisioner_killed_and_the_build_requeued()
 {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("provisioner.pid");
    let script = dir.path().join("hang.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho $$ >> {}\nexec sleep 120\n", pid_file.display()),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    let body = format!(
        "{}[provisioner]\ndrain_timeout = \"1s\"\n[provisioner.exec.hang]\ncommand = {script:?}\n",
        binary_config(dir.path())
    );
    let config = write_config(dir.path(), &body);
    let daemon = DaemonProcess::start(&config);

    // Another process (this test) queues a build in the daemon's database.
    let (store, _) = workspaced::store::Store::open(workspaced::store::StoreOptions::at(
        dir.path().join("data/workspaced.db"),
    ))
    .unwrap();
    let (template_id, _) = crate::fixtures::template(&store, "hang", "hang", &[]);
    let alice = crate::fixtures::user(&store, "alice");
    let ws = crate::fixtures::workspace(&store, &alice, &template_id, "dev");
    let job = crate::fixtures::build(&store, &ws, workspaced::domain::Transition::Start, &alice);
    let status = || crate::fixtures::status_now(&store, &job.job_id);
    eventually(Duration::from_secs(15), "the daemon to start the job", || {
        (status() == workspaced::domain::JobStatus::Running).then_some(())
    });

    // The provisioner's process group is on record (the window before that is the one
    // crash recovery cannot close: nothing is known to kill yet).
    eventually(Duration::from_secs(15), "the process group to be recorded", || {
        store
            .read_blocking(|conn| {
                Ok(conn.query_row(
                    "SELECT process_group IS NOT NULL FROM provisioner_jobs WHERE id = ?1",
                    [&job.job_id],
                    |row| row.get::<_, bool>(0),
                )?)
            })
            .unwrap()
            .then_some(())
    });
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status(), workspaced::domain::JobStatus::Running, "the crash left the job running");
    // The provisioner outlived the daemon (its own process group).
    let first_pid = || -> i32 {
        std::fs::read_to_string(&pid_file).unwrap().lines().next().unwrap().trim().parse().unwrap()
    };
    eventually(Duration::from_secs(10), "the provisioner to write its pid", || {
        std::fs::read_to_string(&pid_file).ok().filter(|text| text.ends_with('\n')).map(|_| ())
    });
    let pid = first_pid();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z')))
    };
    assert!(alive(pid), "the provisioner outlived the daemon");

    let restarted = DaemonProcess::start(&config);
    restarted.wait_for_log("workspaced is ready", Duration::from_secs(10));
    eventually(Duration::from_secs(10), "the restarted daemon to kill the old provisioner", || {
        (!alive(pid)).then_some(())
    });
    let (final_status, error) = workspaced::store::jobs::status(
        &rusqlite::Connection::open(dir.path().join("data/workspaced.db")).unwrap(),
        &job.job_id,
    )
    .unwrap()
    .unwrap();
    assert_eq!(final_status, workspaced::domain::JobStatus::Interrupted);
    assert_eq!(error.as_deref(), Some(workspaced::store::jobs::ORPHANED_ERROR));
    // The user's start is carried on: build 2, same transition, queued at start.
    let (requeued_number, requeued_transition, requeued_job): (i64, String, String) = store
        .read_blocking(|conn| {
            Ok(conn.query_row(
                "SELECT build_number, transition, job_id FROM workspace_builds
                  WHERE workspace_id = ?1 ORDER BY build_number DESC LIMIT 1",
                [&ws],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?)
        })
        .unwrap();
    assert_eq!((requeued_number, requeued_transition.as_str()), (2, "start"));
    let in_progress: i64 = store
        .read_blocking(|conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM provisioner_jobs WHERE status IN ('running', 'canceling', 'pending')
                    AND id <> ?1",
                [&requeued_job],
                |row| row.get(0),
            )?)
        })
        .unwrap();
    let running = in_progress;
    assert_eq!(running, 0);
    let (_, scrape) = http_get(restarted.addr, "/metrics");
    assert_eq!(
        metric_value(&scrape, "workspaced_provisioner_orphaned_jobs_recovered_total"),
        Some(1.0)
    );
    restarted.signal(Signal::SIGTERM);
    assert_eq!(restarted.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn tokens_from_the_command_line_work_against_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let config = config.to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", config]);
        run_binary(&all, &[], Duration::from_secs(30))
    };
    let daemon = DaemonProcess::start(std::path::Path::new(config));

    // Bad input: exit 2, one line naming the problem.
    let output = cli(&["token", "create", "--user", "nobody"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no user \"nobody\""));
    let output = cli(&["token", "create", "--user", "root", "--role", "boss"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--role"));
    let output =
        cli(&["token", "create", "--user", "root", "--role", "owner", "--expires", "soon"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");

    // Bootstrap: the first owner token, printed alone on stdout (while the daemon runs).
    let output = cli(&["token", "create", "--user", "root", "--role", "owner", "--name", "ops"]);
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("wsd_"), "{token}");
    let get = |path: &str, token: &str| {
        let mut stream = std::net::TcpStream::connect(daemon.addr).unwrap();
        use std::io::{Read, Write};
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        raw.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap()
    };
    assert_eq!(get("/api/v1/users", &token), 200);

    assert!(cli(&["user", "create", "alice", "--role", "member"]).status.success());
    assert_eq!(cli(&["user", "create", "alice"]).status.code(), Some(2), "exists");
    let output = cli(&["token", "create", "--user", "alice", "--expires", "30d"]);
    let alice = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(get("/api/v1/workspaces", &alice), 200);
    assert_eq!(get("/api/v1/users", &alice), 403);

    let output = cli(&["token", "list", "--user", "alice"]);
    let listing = String::from_utf8(output.stdout).unwrap();
    assert!(listing.contains("alice") && listing.contains("active"), "{listing}");
    assert!(!listing.contains(alice.rsplit('_').next().unwrap()), "never the secret");
    let id = alice.trim_start_matches("wsd_").split('_').next().unwrap();
    assert!(cli(&["token", "revoke", id]).status.success());
    assert_eq!(get("/api/v1/workspaces", &alice), 401);
    assert_eq!(cli(&["token", "revoke", "no-such-id"]).status.code(), Some(2));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn a_second_daemon_on_the_same_data_directory_refuses_to_start_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let first = DaemonProcess::start(&config);
    first.wait_for_log("workspaced is ready", Duration::from_secs(10));
    let pid = first.pid_for_tests();
    for command in ["serve", "migrate"] {
        let second = run_binary(
            &[command, "--config", config.to_str().unwrap()],
            &[],
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "{command}: {stderr}");
        assert!(stderr.contains(&format!("in use by another workspaced (pid {pid})")), "{stderr}");
    }
    assert!(first.is_running());
    assert_eq!(http_get(first.addr, "/readyz").0, 200);
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(10)).code(), Some(0));
    // The lock went with the process: the next start takes it.
    let again = DaemonProcess::start(&config);
    again.wait_for_log("workspaced is ready", Duration::from_secs(10));
}

#[test]
fn commands_other_than_serve_and_migrate_never_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &binary_config(dir.path()));
    let database = dir.path().join("data/workspaced.db");
    for args in [
        &["token", "create", "--user", "root", "--role", "owner"][..],
        &["user", "create", "alice"][..],
        &["preset", "reset", "p1"][..],
    ] {
        let mut all = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        let output = run_binary(&all, &[], Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded without a database");
        assert!(
            stderr.contains(&format!("database {} does not exist", database.display())),
            "{args:?}: {stderr}"
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).trim().is_empty(),
            "{args:?} printed a token"
        );
        assert!(!database.exists(), "{args:?} created {}", database.display());
    }
    // `migrate` creates it; then a token can be issued (the helper asserts both succeed).
    let _token = crate::helpers::owner_token(&config);
    assert!(database.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_logged_with_its_error_and_the_names_of_what_it_built() {
    let dir = tempfile::tempdir().unwrap();
    let body = binary_config(dir.path())
        + "[provisioner.local]\nfail_transitions = [\"start\"]\n[[templates]]\nname = \"go\"\n";
    let config = write_config(dir.path(), &body);
    let token = crate::helpers::owner_token(&config);
    let daemon = DaemonProcess::start(&config);
    let api = crate::client::Api::new(daemon.addr, Some(&token));
    let (status, created) = api
        .post("/api/v1/workspaces", serde_json::json!({ "template": "go", "name": "dev" }))
        .await;
    assert_eq!(status, 201, "{created}");
    let line = daemon.wait_for_log("job failed", Duration::from_secs(20));
    let fields = &line["fields"];
    assert_eq!(fields["workspace"], "dev", "{line}");
    assert_eq!(fields["owner"], "root", "{line}");
    assert_eq!(fields["template"], "go", "{line}");
    assert!(
        fields["error"].as_str().is_some_and(|error| error.contains("start failed on purpose")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_reconcile_runs_at_start_so_pool_gauges_exist_when_ready_and_a_claim_succeeds_within_seconds()
 {
    let dir = tempfile::tempdir().unwrap();
    // A reconcile interval of an hour: only the cycle at start can fill the pool in time.
    let body = binary_config(dir.path())
        .replace("interval = \"1s\"\n[lifecycle]", "interval = \"1h\"\n[lifecycle]")
        + "[provisioner.local]\nbuild_duration = \"0s\"\n\
           [[templates]]\nname = \"go\"\n[[templates.presets]]\nname = \"small\"\n\
           [templates.presets.prebuilds]\ninstances = 1\n";
    assert!(body.contains("[reconciler]\ninterval = \"1h\""), "{body}");
    let config = write_config(dir.path(), &body);
    let token = crate::helpers::owner_token(&config);
    let daemon = DaemonProcess::start(&config);
    let started = std::time::Instant::now();
    let api = crate::client::Api::new(daemon.addr, Some(&token));
    // The cycle at start queued the prebuild, and says for which pool by name.
    let created = daemon.wait_for_log("prebuild created", Duration::from_secs(20));
    assert_eq!(created["span"]["template"], "go", "{created}");
    assert_eq!(created["span"]["preset"], "small", "{created}");
    // Ready comes after the first cycle: the pool's gauges are there at once.
    daemon.wait_for_log("workspaced is ready", Duration::from_secs(20));
    let series = "workspaced_prebuilt_workspaces_desired{organization_name=\"default\",preset_name=\"small\",template_name=\"go\"}";
    let (_, scrape) = crate::helpers::http_get(daemon.addr, "/metrics");
    assert_eq!(crate::helpers::metric_value(&scrape, series), Some(1.0), "{scrape}");
    // The claim gets it as soon as it is built.
    let line = daemon.wait_for_log("job finished", Duration::from_secs(20));
    assert_eq!(line["fields"]["owner"], "prebuilds", "{line}");
    assert_eq!(line["fields"]["status"], "succeeded", "{line}");
    let (status, created) = api
        .post(
            "/api/v1/workspaces",
            serde_json::json!({ "template": "go", "preset": "small", "name": "mine" }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["claimed"], true, "{created}");
    assert!(started.elapsed() < Duration::from_secs(20));
}
