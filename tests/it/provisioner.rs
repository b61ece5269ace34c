//! Builds that really run: the job runner with the local backend and real child processes
//! for the exec backend, including every way a backend can misbehave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use workspaced::config::duration::HumanDuration;
use workspaced::config::{Config, ExecBackendConfig};
use workspaced::domain::{BuildReason, JobStatus, PREBUILDS_USER_ID, Transition};
use workspaced::store::builds::{BuildError, BuildRequest};
use workspaced::store::jobs::CancelResult;
use workspaced::store::{StoreError, workspaces};

use crate::fixtures::{
    self, build, enqueue, finished, logs, parameter, params, status_where, template, user,
    workspace,
};
use crate::helpers::{TestDaemon, metric_value};

fn exec_profile(command: &Path, env: &[(&str, &str)]) -> ExecBackendConfig {
    ExecBackendConfig {
        command: command.to_path_buf(),
        args: Vec::new(),
        env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        working_dir: None,
        max_output_bytes: 64 * 1024,
    }
}

/// Writes an executable shell script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&path, permissions).unwrap();
    path
}

fn example_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/provisioners/example.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_stop_delete_cycle_on_the_local_backend_creates_keeps_and_removes_the_directory() {
    let daemon = TestDaemon::spawn().await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "go", "local", &[parameter("cpu", "2", true)]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "dev");
    let dir = daemon.dir.path().join("data/workspaces").join(&ws);

    let start = build(&store, &ws, Transition::Start, &alice);
    assert_eq!(finished(&store, &start.job_id).await, (JobStatus::Succeeded, None));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["status"], "running");
    assert_eq!(state["parameters"]["cpu"], "2");
    let row = store.read(move |conn| workspaces::get(conn, &ws)).await.unwrap().unwrap();
    assert_eq!(row.agents_ready, Some(true));
    let ws = row.id;
    assert!(logs(&store, &start.job_id).iter().any(|line| line.contains("is running")));

    let stop = build(&store, &ws, Transition::Stop, &alice);
    assert_eq!(finished(&store, &stop.job_id).await.0, JobStatus::Succeeded);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["status"], "stopped");
    let id = ws.clone();
    let row = store.read(move |conn| workspaces::get(conn, &id)).await.unwrap().unwrap();
    assert_eq!(row.agents_ready, None);

    let delete = build(&store, &ws, Transition::Delete, &alice);
    assert_eq!(finished(&store, &delete.job_id).await.0, JobStatus::Succeeded);
    assert!(!dir.exists());
    let id = ws.clone();
    assert!(store.read(move |conn| workspaces::get(conn, &id)).await.unwrap().unwrap().deleted);
    // The name is free again.
    workspace(&store, &alice, &template_id, "dev");

    let (_, scrape) = daemon.get("/metrics").await;
    for transition in ["start", "stop", "delete"] {
        let series = format!(
            "workspaced_provisioner_jobs_total{{backend=\"local\",status=\"succeeded\",transition=\"{transition}\"}}"
        );
        assert_eq!(metric_value(&scrape, &series), Some(1.0), "{series}");
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_with_a_build_in_progress_gets_no_second_build() {
    let dir = tempfile::tempdir().unwrap();
    let hang = script(dir.path(), "hang.sh", "sleep 30");
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert("hang".into(), exec_profile(&hang, &[]));
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "slow", "hang", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "dev");
    let start = build(&store, &ws, Transition::Start, &alice);
    let request = BuildRequest::new(&ws, Transition::Stop, BuildReason::Initiator, &alice);
    let second = store.write_blocking(|tx| {
        workspaced::store::builds::enqueue(tx, &request, crate::helpers::start_time())
    });
    assert!(matches!(second, Err(BuildError::InProgress { .. })), "{second:?}");
    assert!(matches!(
        daemon.runner.cancel(&start.job_id).await.unwrap(),
        CancelResult::Canceling | CancelResult::Canceled(_)
    ));
    assert_eq!(finished(&store, &start.job_id).await.0, JobStatus::Canceled);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_backend_runs_the_example_provisioner_and_passes_state_between_builds() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_str().unwrap().to_owned();
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert(
            "example".into(),
            exec_profile(&example_script(), &[("EXAMPLE_PROVISIONER_ROOT", &root_path)]),
        );
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(
        &store,
        "py",
        "example",
        &[parameter("region", "eu", true), parameter("fail", "false", true)],
    );
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "dev");
    let dir = root.path().join(&ws);

    let start = build(&store, &ws, Transition::Start, &alice);
    assert_eq!(finished(&store, &start.job_id).await, (JobStatus::Succeeded, None));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("params.json")).unwrap()).unwrap();
    assert_eq!(written["parameters"]["region"], "eu");
    let lines = logs(&store, &start.job_id);
    assert!(
        lines.iter().any(|line| line.starts_with("info plan: start of dev (build 1)")),
        "{lines:?}"
    );
    let id = ws.clone();
    assert_eq!(
        store.read(move |c| workspaces::get(c, &id)).await.unwrap().unwrap().agents_ready,
        Some(true)
    );

    let stop = build(&store, &ws, Transition::Stop, &alice);
    assert_eq!(finished(&store, &stop.job_id).await.0, JobStatus::Succeeded);
    // The stop saw the start's state: the generation counter went up.
    let build_id = stop.build_id.clone();
    let state: Option<Vec<u8>> = store
        .read(move |conn| {
            Ok(conn.query_row(
                "SELECT provisioner_state FROM workspace_builds WHERE id = ?1",
                [&build_id],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.unwrap()).unwrap();
    assert_eq!(state["generation"], 2);
    let timings: i64 = store
        .read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM provisioner_job_timings", [], |r| r.get(0))?)
        })
        .await
        .unwrap();
    assert_eq!(timings, 2);

    let delete = build(&store, &ws, Transition::Delete, &alice);
    assert_eq!(finished(&store, &delete.job_id).await.0, JobStatus::Succeeded);
    assert!(!dir.exists());

    // A reported error fails the build and leaves the workspace as it was.
    let ws2 = workspace(&store, &alice, &template_id, "second");
    let mut failing = BuildRequest::new(&ws2, Transition::Start, BuildReason::Initiator, &alice);
    failing.parameters = params(&[("fail", "true")]);
    let failed = enqueue(&store, failing);
    let (status, error) = finished(&store, &failed.job_id).await;
    assert_eq!(status, JobStatus::Failed);
    assert_eq!(
        error.as_deref(),
        Some("provisioner reported an error: parameter fail=true asked this build to fail")
    );
    assert!(!root.path().join(&ws2).exists());
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_replaces_resources_is_recorded_counted_and_notified() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_str().unwrap().to_owned();
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert(
            "example".into(),
            exec_profile(&example_script(), &[("EXAMPLE_PROVISIONER_ROOT", &root_path)]),
        );
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, version_id) =
        template(&store, "py", "example", &[parameter("region", "eu", true)]);
    let preset_id = store
        .write_blocking(|tx| {
            workspaced::store::templates::insert_preset(
                tx,
                &version_id,
                &workspaced::store::templates::PresetSpec {
                    name: "small".into(),
                    parameters: params(&[("region", "eu")]),
                    desired_instances: Some(1),
                    ttl_s: None,
                    scheduling_timezone: String::new(),
                    schedules: Vec::new(),
                },
                crate::helpers::start_time(),
            )
        })
        .unwrap();
    // The prebuild, built by the prebuilds user with the preset's parameters.
    let ws = workspace(&store, PREBUILDS_USER_ID, &template_id, "prebuild-1");
    let mut create =
        BuildRequest::new(&ws, Transition::Start, BuildReason::Prebuild, PREBUILDS_USER_ID);
    create.parameters = params(&[("region", "eu")]);
    create.preset_id = Some(preset_id.clone());
    create.is_prebuild = true;
    let created = enqueue(&store, create);
    assert_eq!(finished(&store, &created.job_id).await.0, JobStatus::Succeeded);

    // Alice claims it with another region: the provisioner replaces the directory.
    let alice = user(&store, "alice");
    let id = ws.clone();
    let owner = alice.clone();
    store
        .write_blocking(move |tx| {
            tx.execute(
                "UPDATE workspaces SET owner_id = ?2, name = 'mine' WHERE id = ?1",
                [&id, &owner],
            )
            .map_err(StoreError::from)
        })
        .unwrap();
    let mut claim = BuildRequest::new(&ws, Transition::Start, BuildReason::Claim, &alice);
    claim.parameters = params(&[("region", "us")]);
    claim.preset_id = Some(preset_id);
    claim.is_prebuild_claim = true;
    let claimed = enqueue(&store, claim);
    assert_eq!(finished(&store, &claimed.job_id).await.0, JobStatus::Succeeded);

    let (replacements, notifications): (i64, i64) = store
        .read(|conn| {
            Ok((
                conn.query_row("SELECT COUNT(*) FROM resource_replacements", [], |r| r.get(0))?,
                conn.query_row(
                    "SELECT COUNT(*) FROM notifications WHERE kind = 'prebuild.resource_replaced'",
                    [],
                    |r| r.get(0),
                )?,
            ))
        })
        .await
        .unwrap();
    assert_eq!((replacements, notifications), (1, 1));
    assert!(
        logs(&store, &claimed.job_id)
            .iter()
            .any(|l| l.contains("example_directory.home was replaced"))
    );
    let (_, scrape) = daemon.get("/metrics").await;
    assert_eq!(
        metric_value(
            &scrape,
            "workspaced_prebuilt_workspaces_resource_replacements_total{organization_name=\"default\",preset_name=\"small\",template_name=\"py\"}"
        ),
        Some(1.0)
    );
    daemon.shutdown().await;
}

/// One misbehaving provisioner: the job fails with `expected` in its error, the daemon stays
/// up, and a local build afterwards still succeeds.
async fn check_bad_backend(body: &str, adjust: impl FnOnce(&mut Config), expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let bad = script(dir.path(), "bad.sh", body);
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert("bad".into(), exec_profile(&bad, &[]));
        adjust(config);
    })
    .await;
    let store = daemon.store.clone();
    let (bad_template, _) = template(&store, "bad", "bad", &[]);
    let (good_template, _) = template(&store, "good", "local", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &bad_template, "broken");
    let job = build(&store, &ws, Transition::Start, &alice);
    let (status, error) = finished(&store, &job.job_id).await;
    assert_eq!(status, JobStatus::Failed);
    let error = error.unwrap();
    assert!(error.contains(expected), "{error:?} does not contain {expected:?}");
    assert!(logs(&store, &job.job_id).iter().any(|line| line.contains("build failed")));
    // The workspace was not started.
    let id = ws.clone();
    assert_eq!(
        store.read(move |c| workspaces::get(c, &id)).await.unwrap().unwrap().agents_ready,
        None
    );
    // The daemon is up and other jobs go on.
    assert_eq!(daemon.get("/healthz").await.0, 200);
    let fine = workspace(&store, &alice, &good_template, "fine");
    let ok = build(&store, &fine, Transition::Start, &alice);
    assert_eq!(finished(&store, &ok.job_id).await.0, JobStatus::Succeeded);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_provisioner_fails_the_job_with_its_exit_status_and_last_stderr_line() {
    check_bad_backend(
        "cat >/dev/null; echo 'terraform: boom' >&2; exit 3",
        |_| {},
        "provisioner exited with status 3: terraform: boom",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioner_printing_garbage_fails_the_job_naming_the_line() {
    check_bad_backend(
        "cat >/dev/null; echo '{\"type\":\"log\",\"output\":\"ok\"}'; echo 'hello world'; sleep 30",
        |_| {},
        "malformed JSON on stdout line 2",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioner_writing_gigabytes_is_killed_at_the_output_cap() {
    check_bad_backend(
        "cat >/dev/null; yes '{\"type\":\"log\",\"output\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}'",
        |_| {},
        "exceeded the 65536-byte limit",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioner_exiting_zero_without_a_result_fails_the_job() {
    check_bad_backend(
        "cat >/dev/null; echo '{\"type\":\"log\",\"output\":\"did nothing\"}'",
        |_| {},
        "without a \"complete\" message",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_provisioner_executable_fails_the_job() {
    let daemon = TestDaemon::spawn_with(|config| {
        config
            .provisioner
            .exec
            .insert("gone".into(), exec_profile(Path::new("/nonexistent/provisioner"), &[]));
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "gone", "gone", &[]);
    let (unknown_template, _) = template(&store, "unknown", "no-such-profile", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "a");
    let job = build(&store, &ws, Transition::Start, &alice);
    let (status, error) = finished(&store, &job.job_id).await;
    assert_eq!(status, JobStatus::Failed);
    assert!(error.unwrap().contains("cannot start provisioner /nonexistent/provisioner"));
    let ws = workspace(&store, &alice, &unknown_template, "b");
    let job = build(&store, &ws, Transition::Start, &alice);
    let (_, error) = finished(&store, &job.job_id).await;
    assert!(error.unwrap().contains("unknown provisioner \"no-such-profile\""));
    daemon.shutdown().await;
}

/// Whether a process is gone (or a zombie waiting for init).
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_provisioner_is_stopped_at_the_job_timeout_even_if_it_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let body = format!(
        "trap '' TERM\ncat >/dev/null\nsleep 300 &\necho $$ $! > {}\nwait\nwait",
        pids.display()
    );
    let hang = script(dir.path(), "hang.sh", &body);
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert("hang".into(), exec_profile(&hang, &[]));
        config.provisioner.job_timeout = HumanDuration::from_secs(1);
        config.provisioner.kill_grace = HumanDuration::from_secs(1);
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "hang", "hang", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "a");
    let job = build(&store, &ws, Transition::Start, &alice);
    let (status, error) = finished(&store, &job.job_id).await;
    assert_eq!(status, JobStatus::Failed);
    assert!(error.unwrap().contains("job timed out after 1s"));
    // The script and the sleep it started are gone.
    let recorded = std::fs::read_to_string(&pids).unwrap();
    for pid in recorded.split_whitespace() {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !process_gone(pid) {
            assert!(std::time::Instant::now() < deadline, "process {pid} survived the job");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (_, scrape) = daemon.get("/metrics").await;
    assert_eq!(metric_value(&scrape, "workspaced_provisioner_job_timeouts_total"), Some(1.0));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_logs_are_capped_with_one_notice() {
    let dir = tempfile::tempdir().unwrap();
    let chatty = script(
        dir.path(),
        "chatty.sh",
        "cat >/dev/null\ni=0\nwhile [ $i -lt 200 ]; do echo '{\"type\":\"log\",\"output\":\"0123456789012345678901234567890123456789\"}'; i=$((i+1)); done\necho '{\"type\":\"complete\"}'",
    );
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert("chatty".into(), exec_profile(&chatty, &[]));
        config.provisioner.max_log_bytes = 2048;
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "chatty", "chatty", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "a");
    let job = build(&store, &ws, Transition::Start, &alice);
    assert_eq!(finished(&store, &job.job_id).await.0, JobStatus::Succeeded);
    let lines = logs(&store, &job.job_id);
    let notices = lines.iter().filter(|line| line.contains("log output truncated")).count();
    assert_eq!(notices, 1, "{lines:?}");
    assert!(lines.len() < 60, "{} lines kept", lines.len());
    assert!(lines.last().unwrap().contains("build succeeded"));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_go_first_and_prebuilds_never_hold_more_than_their_share_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let hang = script(dir.path(), "hang.sh", "cat >/dev/null; sleep 60");
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert("hang".into(), exec_profile(&hang, &[]));
        config.provisioner.concurrency = 2;
        config.provisioner.prebuild_share = 0.5;
    })
    .await;
    let store = daemon.store.clone();
    let (slow_template, _) = template(&store, "slow", "hang", &[]);
    let (fast_template, _) = template(&store, "fast", "local", &[]);
    let mut prebuild_jobs = Vec::new();
    for n in 0..3 {
        let ws = workspace(&store, PREBUILDS_USER_ID, &slow_template, &format!("prebuild-{n}"));
        let mut request =
            BuildRequest::new(&ws, Transition::Start, BuildReason::Prebuild, PREBUILDS_USER_ID);
        request.is_prebuild = true;
        let at = crate::helpers::start_time() + chrono::Duration::seconds(n);
        prebuild_jobs.push(fixtures::enqueue_at(&store, request, at).job_id);
    }
    // The oldest prebuild runs; the others wait although a worker is idle.
    status_where(&store, &prebuild_jobs[0], |s| s == JobStatus::Running, Duration::from_secs(10))
        .await;
    // A third worker asking now gets nothing: the prebuild share (1 of 2) is used up.
    let extra = daemon
        .runner
        .run_one("test-worker", &tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(extra.is_none());
    assert_eq!(fixtures::status_now(&store, &prebuild_jobs[1]), JobStatus::Pending);
    // A user's build gets the free worker at once.
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &fast_template, "mine");
    let mine = build(&store, &ws, Transition::Start, &alice);
    assert_eq!(finished(&store, &mine.job_id).await.0, JobStatus::Succeeded);
    // Cancelling the running prebuild lets the next one (the oldest) start.
    assert_eq!(daemon.runner.cancel(&prebuild_jobs[0]).await.unwrap(), CancelResult::Canceling);
    assert_eq!(finished(&store, &prebuild_jobs[0]).await.0, JobStatus::Canceled);
    status_where(&store, &prebuild_jobs[1], |s| s == JobStatus::Running, Duration::from_secs(10))
        .await;
    assert_eq!(fixtures::status_now(&store, &prebuild_jobs[2]), JobStatus::Pending);
    // A pending job is canceled at once.
    assert!(matches!(
        daemon.runner.cancel(&prebuild_jobs[2]).await.unwrap(),
        CancelResult::Canceled(_)
    ));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_most_urgent_job_is_taken_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = workspaced::store::Store::open(workspaced::store::StoreOptions::at(
        dir.path().join("w.db"),
    ))
    .unwrap();
    let (template_id, _) = template(&store, "t", "local", &[]);
    let alice = user(&store, "alice");
    let mut expected = BTreeMap::new();
    for (n, reason) in
        [BuildReason::Prebuild, BuildReason::Autostop, BuildReason::Initiator, BuildReason::Gc]
            .into_iter()
            .enumerate()
    {
        let ws = workspace(&store, &alice, &template_id, &format!("w{n}"));
        let at = crate::helpers::start_time() + chrono::Duration::seconds(n as i64);
        let job = fixtures::enqueue_at(
            &store,
            BuildRequest::new(&ws, Transition::Start, reason, &alice),
            at,
        );
        expected.insert(job.job_id, reason);
    }
    let take = |allow_prebuild: bool| {
        store
            .write_blocking(|tx| {
                workspaced::store::jobs::acquire(
                    tx,
                    "w",
                    allow_prebuild,
                    crate::helpers::start_time(),
                )
            })
            .unwrap()
            .map(|job| expected[&job.job_id])
    };
    assert_eq!(take(true), Some(BuildReason::Initiator));
    assert_eq!(take(true), Some(BuildReason::Autostop));
    assert_eq!(take(false), Some(BuildReason::Gc));
    assert_eq!(take(false), None, "prebuild jobs are skipped when the share is used up");
    assert_eq!(take(true), Some(BuildReason::Prebuild));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_interrupts_jobs_still_running_after_the_drain_timeout_and_the_next_start_requeues_them()
 {
    let dir = tempfile::tempdir().unwrap();
    let hang = script(dir.path(), "hang.sh", "cat >/dev/null; sleep 60");
    let profile = exec_profile(&hang, &[]);
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert("hang".into(), profile.clone());
        config.provisioner.drain_timeout = HumanDuration::from_secs(1);
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "slow", "hang", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "dev");
    let job = build(&store, &ws, Transition::Start, &alice);
    status_where(&store, &job.job_id, |s| s == JobStatus::Running, Duration::from_secs(10)).await;
    let started = std::time::Instant::now();
    let data = daemon.shutdown_keeping_dir().await;
    assert!(started.elapsed() >= Duration::from_secs(1), "the job had its drain time");
    let (status, error) = fixtures::status_now_with_error(&store, &job.job_id);
    assert_eq!(status, JobStatus::Interrupted, "a shutdown is not the template's failure");
    assert_eq!(error.as_deref(), Some("the daemon shut down during the job"));
    fixtures::assert_latest_summaries_consistent(&store);
    drop(store);

    // The next start carries on: the user's start is queued again and runs.
    let daemon = TestDaemon::spawn_in(data, |config| {
        config.provisioner.exec.insert("hang".into(), profile);
    })
    .await;
    let requeued = daemon
        .count(&format!(
            "SELECT COUNT(*) FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id \
             WHERE b.workspace_id = '{ws}' AND b.transition = 'start' \
             AND j.id <> '{}' AND j.status IN ('pending', 'running')",
            job.job_id
        ))
        .await;
    assert_eq!(requeued, 1, "the interrupted start is re-queued, not dropped");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_jobs_finish_within_the_drain_timeout_and_takes_no_new_ones() {
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.local.build_duration = HumanDuration::from_secs(2);
        config.provisioner.concurrency = 1;
        config.provisioner.drain_timeout = HumanDuration::from_secs(20);
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "go", "local", &[]);
    let alice = user(&store, "alice");
    let first = workspace(&store, &alice, &template_id, "first");
    let second = workspace(&store, &alice, &template_id, "second");
    let running = build(&store, &first, Transition::Start, &alice);
    status_where(&store, &running.job_id, |s| s == JobStatus::Running, Duration::from_secs(10))
        .await;
    let waiting = build(&store, &second, Transition::Start, &alice);
    daemon.shutdown().await;
    let (status, error) = fixtures::status_now_with_error(&store, &running.job_id);
    assert_eq!(status, JobStatus::Succeeded, "the running build finished: {error:?}");
    let (status, _) = fixtures::status_now_with_error(&store, &waiting.job_id);
    assert_eq!(status, JobStatus::Pending, "no job starts after SIGTERM; the next start runs it");
    fixtures::assert_latest_summaries_consistent(&store);
}

/// A store of its own (no daemon) with a job marked running by a worker that is gone.
fn running_by_a_dead_worker(store: &workspaced::store::Store, request: BuildRequest) -> String {
    let job = enqueue(store, request);
    let acquired = store
        .write_blocking(|tx| {
            workspaced::store::jobs::acquire(
                tx,
                "dead-process/worker-0",
                true,
                crate::helpers::start_time(),
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!(acquired.job_id, job.job_id);
    job.job_id
}

#[test]
fn interrupted_builds_are_requeued_and_an_interrupted_prebuild_create_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = workspaced::store::Store::open(workspaced::store::StoreOptions::at(
        dir.path().join("w.db"),
    ))
    .unwrap();
    let (template_id, version_id) = template(&store, "t", "local", &[parameter("size", "s", true)]);
    let preset_id = store
        .write_blocking(|tx| {
            let spec = workspaced::store::templates::PresetSpec {
                name: "small".into(),
                parameters: BTreeMap::new(),
                desired_instances: Some(1),
                ttl_s: None,
                scheduling_timezone: String::new(),
                schedules: Vec::new(),
            };
            workspaced::store::templates::insert_preset(
                tx,
                &version_id,
                &spec,
                crate::helpers::start_time(),
            )
        })
        .unwrap();
    let alice = user(&store, "alice");
    let users_ws = workspace(&store, &alice, &template_id, "dev");
    // A claimed prebuild (now alice's) whose claim build was running at the crash.
    let claimed_ws = workspace(&store, &alice, &template_id, "claimed");
    let mut claim = BuildRequest::new(&claimed_ws, Transition::Start, BuildReason::Claim, &alice);
    claim.preset_id = Some(preset_id);
    claim.is_prebuild_claim = true;
    let claim_job = running_by_a_dead_worker(&store, claim);
    let mut start = BuildRequest::new(&users_ws, Transition::Start, BuildReason::Initiator, &alice);
    start.parameters = params(&[("size", "l")]);
    let user_job = running_by_a_dead_worker(&store, start);
    let prebuild_ws = workspace(&store, PREBUILDS_USER_ID, &template_id, "prebuild-1");
    let mut create = BuildRequest::new(
        &prebuild_ws,
        Transition::Start,
        BuildReason::Prebuild,
        PREBUILDS_USER_ID,
    );
    create.is_prebuild = true;
    let prebuild_job = running_by_a_dead_worker(&store, create);

    let now = crate::helpers::start_time() + chrono::Duration::minutes(1);
    let orphans = store
        .write_blocking(|tx| workspaced::store::jobs::interrupt_orphans(tx, None, now))
        .unwrap();
    assert_eq!(orphans.len(), 3);
    assert_eq!(fixtures::status_now(&store, &claim_job), JobStatus::Interrupted);
    assert_eq!(fixtures::status_now(&store, &user_job), JobStatus::Interrupted);
    assert_eq!(fixtures::status_now(&store, &prebuild_job), JobStatus::Interrupted);
    // The planner sees an interrupted build as canceled: never a failure of the template.
    let snapshot = store
        .read_blocking(|conn| {
            workspaced::store::snapshot::read(conn, now, Config::default().planner_settings())
        })
        .unwrap();
    let latest = snapshot.builds.iter().find(|build| build.workspace_id == prebuild_ws).unwrap();
    assert_eq!(latest.job_status, JobStatus::Canceled);

    let resumed =
        store.write_blocking(|tx| workspaced::store::builds::resume_interrupted(tx, now)).unwrap();
    let by_workspace: BTreeMap<_, _> =
        resumed.iter().map(|r| (r.queued.workspace_id.clone(), r)).collect();
    let user_again = by_workspace[&users_ws];
    assert_eq!(user_again.queued.transition, Transition::Start);
    assert_eq!(user_again.queued.build_number, 2);
    assert!(!user_again.cleaned_up);
    let values = store
        .read_blocking(|conn| {
            workspaced::store::builds::parameters(conn, &user_again.queued.build_id)
        })
        .unwrap();
    assert_eq!(values.get("size").map(String::as_str), Some("l"), "same parameters");
    let prebuild_again = by_workspace[&prebuild_ws];
    assert_eq!(prebuild_again.queued.transition, Transition::Delete);
    assert!(prebuild_again.cleaned_up);
    // The claim is retried as the same claim (the backend is told so again), and it is
    // still one claim: for the invariants and for the lifetime metric.
    let claim_again = by_workspace[&claimed_ws];
    let (reason, is_claim): (String, bool) = store
        .read_blocking(|conn| {
            conn.query_row(
                "SELECT reason, is_prebuild_claim FROM workspace_builds WHERE id = ?1",
                [&claim_again.queued.build_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(StoreError::from)
        })
        .unwrap();
    assert_eq!((reason.as_str(), is_claim), ("claim", true));
    let report =
        store.read_blocking(|conn| workspaced::store::invariants::check(conn, None)).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let totals = store.read_blocking(workspaced::store::presets::lifetime_counts).unwrap();
    assert_eq!(totals.len(), 1, "{totals:?}");
    assert_eq!(totals[0].1[2], 1, "claimed once: {totals:?}");

    // Once re-queued, nothing is re-queued twice.
    let again =
        store.write_blocking(|tx| workspaced::store::builds::resume_interrupted(tx, now)).unwrap();
    assert!(again.is_empty());
    fixtures::assert_latest_summaries_consistent(&store);
}

/// Makes every change of a job's status to one of `statuses` fail (as a full disk or a
/// held lock would) while the table `block_completion` has a row.
fn block_job_status_changes(store: &workspaced::store::Store, statuses: &str) {
    let sql = format!(
        "CREATE TABLE block_completion (x);
         INSERT INTO block_completion VALUES (1);
         CREATE TRIGGER completion_fails BEFORE UPDATE OF status ON provisioner_jobs
           WHEN NEW.status IN ({statuses}) AND EXISTS (SELECT 1 FROM block_completion)
           BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END;"
    );
    store
        .write_blocking(move |tx| {
            tx.execute_batch(&sql)?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_completion_cannot_be_written_is_failed_in_a_minimal_transaction() {
    let daemon = TestDaemon::spawn().await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "t", "local", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "dev");
    block_job_status_changes(&store, "'succeeded'");
    let job = build(&store, &ws, Transition::Start, &alice);
    let (status, error) = finished(&store, &job.job_id).await;
    assert_eq!(status, JobStatus::Failed);
    assert!(error.as_deref().is_some_and(|e| e.contains("could not be recorded")), "{error:?}");
    // The workspace is not stuck: it takes the next build.
    let next = build(&store, &ws, Transition::Start, &alice);
    let (status, _) = finished(&store, &next.job_id).await;
    assert_eq!(status, JobStatus::Failed, "still blocked, but the build ran and ended");
    fixtures::assert_latest_summaries_consistent(&store);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_no_worker_holds_is_interrupted_by_the_periodic_check() {
    let daemon = TestDaemon::spawn().await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "t", "local", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "dev");
    block_job_status_changes(&store, "'succeeded', 'failed'");
    let job = build(&store, &ws, Transition::Start, &alice);
    status_where(&store, &job.job_id, |s| s == JobStatus::Running, Duration::from_secs(10)).await;
    // While the worker retries its completion it holds the job: the check leaves it alone.
    // Once the worker gives up (and cannot fail it either), the check interrupts it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let recovered = loop {
        let recovered = daemon.runner.recover_orphans(false).await.unwrap();
        if !recovered.is_empty() {
            break recovered;
        }
        assert_eq!(fixtures::status_now(&store, &job.job_id), JobStatus::Running);
        assert!(tokio::time::Instant::now() < deadline, "the worker never let go");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(recovered.len(), 1);
    store
        .write_blocking(|tx| {
            tx.execute_batch("DELETE FROM block_completion")?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    assert_eq!(fixtures::status_now(&store, &job.job_id), JobStatus::Interrupted);
    // A job a live worker holds is never touched by the same check.
    let slow = build(&store, &ws, Transition::Start, &alice);
    let _ = finished(&store, &slow.job_id).await;
    assert!(daemon.runner.recover_orphans(false).await.unwrap().is_empty());
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_user_builds_does_not_starve_the_pool() {
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.concurrency = 2;
        config.provisioner.local.build_duration = HumanDuration::from_secs(1);
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "t", "local", &[]);
    let alice = user(&store, "alice");
    let mut users_jobs = Vec::new();
    for n in 0..6 {
        let ws = workspace(&store, &alice, &template_id, &format!("mine-{n}"));
        users_jobs.push(build(&store, &ws, Transition::Start, &alice).job_id);
    }
    let ws = workspace(&store, PREBUILDS_USER_ID, &template_id, "prebuild-0");
    let mut request =
        BuildRequest::new(&ws, Transition::Start, BuildReason::Prebuild, PREBUILDS_USER_ID);
    request.is_prebuild = true;
    let prebuild = enqueue(&store, request).job_id;
    assert_eq!(finished(&store, &prebuild).await.0, JobStatus::Succeeded);
    let unfinished =
        users_jobs.iter().filter(|job| !fixtures::status_now(&store, job).is_terminal()).count();
    assert!(unfinished >= 2, "the prebuild waited for the whole backlog ({unfinished} left)");
    for job in &users_jobs {
        assert_eq!(finished(&store, job).await.0, JobStatus::Succeeded);
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_log_lines_count_against_the_cap_too() {
    let dir = tempfile::tempdir().unwrap();
    let blank = script(
        dir.path(),
        "blank.sh",
        "cat >/dev/null\ni=0\nwhile [ $i -lt 1000 ]; do echo '{\"type\":\"log\",\"output\":\"\",\"stage\":\"\"}'; i=$((i+1)); done\necho '{\"type\":\"complete\"}'",
    );
    let daemon = TestDaemon::spawn_with(|config| {
        config.provisioner.exec.insert("blank".into(), exec_profile(&blank, &[]));
        config.provisioner.max_log_bytes = 2048;
    })
    .await;
    let store = daemon.store.clone();
    let (template_id, _) = template(&store, "blank", "blank", &[]);
    let alice = user(&store, "alice");
    let ws = workspace(&store, &alice, &template_id, "a");
    let job = build(&store, &ws, Transition::Start, &alice);
    assert_eq!(finished(&store, &job.job_id).await.0, JobStatus::Succeeded);
    let lines = logs(&store, &job.job_id);
    // 2048 bytes at 32 bytes a row: about 64 rows, never 1,000.
    assert!(lines.len() <= 2048 / 32 + 2, "{} empty lines kept", lines.len());
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_corrupt_stored_config_fails_loudly_and_the_others_run() {
    let daemon = TestDaemon::spawn().await;
    let store = daemon.store.clone();
    let (broken, version) = template(&store, "broken", "local", &[]);
    let (fine, _) = template(&store, "fine", "local", &[]);
    store
        .write_blocking(move |tx| {
            tx.execute(
                "UPDATE template_versions SET provisioner_config = 'not json' WHERE id = ?1",
                [&version],
            )?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let alice = user(&store, "alice");
    let bad = build(&store, &workspace(&store, &alice, &broken, "a"), Transition::Start, &alice);
    let good = build(&store, &workspace(&store, &alice, &fine, "b"), Transition::Start, &alice);
    let (status, error) = finished(&store, &bad.job_id).await;
    assert_eq!(status, JobStatus::Failed);
    assert!(error.as_deref().is_some_and(|e| e.contains("corrupt")), "{error:?}");
    assert_eq!(finished(&store, &good.job_id).await.0, JobStatus::Succeeded);
    fixtures::assert_latest_summaries_consistent(&store);
    daemon.shutdown().await;
}
